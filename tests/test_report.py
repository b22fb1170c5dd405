"""report.html: one self-contained page per run, rendered here by a real browser (headless Chromium)."""

import base64
import io
import re
import shutil
import subprocess

import pytest
from PIL import Image

from cnnzip.cli import main
from cnnzip.report import Section, write_report

CHROMIUM = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def render(path):
    """The page's DOM after load, as Chromium sees it (scripts run, images decoded)."""
    if CHROMIUM is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium)")
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                        "--dump-dom", path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_a_prune_run_report_opens_offline_with_its_table_and_plots(tmp_path, digits_model, capsys):
    model = digits_model(3)
    out = tmp_path / "prune"
    assert main(["prune", str(model), "--ratio", "0.5", "--latency-batches", "none", "--out", str(out),
                 "--quiet"]) == 0
    assert f"report {out / 'report.html'}" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing to download
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert pngs and all(Image.open(io.BytesIO(base64.b64decode(p))).size[0] > 100 for p in pngs)
    dom = render(out / "report.html")
    body = re.search(r"<body[^>]*>", dom).group(0)
    images, loaded = (int(re.search(rf'{k}="(\d+)"', body).group(1)) for k in ("data-images", "data-images-loaded"))
    assert images == len(pngs) and loaded == images  # every image decoded in the browser
    assert "<table>" in dom and "Channels per layer" in dom and "features.0" in dom


def test_the_page_escapes_what_it_shows_and_leaves_out_missing_plots(tmp_path):
    path = write_report(tmp_path / "r.html", "a <b> title", [
        Section("s & t", "x < y", [["layer", "bytes"], ["<conv>", 1234567], ["fc", 0.125]], images=[("none", None)])])
    page = path.read_text()
    assert "a &lt;b&gt; title" in page and "&lt;conv&gt;" in page and "1,234,567" in page and "<img" not in page
    dom = render(path)
    assert 'data-images="0"' in dom and "s &amp; t" in dom
