"""report.html: what a run did, as one self-contained page that opens offline (images inlined, no downloads).

Every command that writes a run directory writes one: its before/after table and the plots that fit it. A few
lines of script mark on the page's body how many images decoded, so a test (or a curious user) can check it.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_write_text

__all__ = ["Section", "write_report"]


@dataclass
class Section:
    """A heading, a paragraph, a table (its first line the header) and images (caption, PNG bytes)."""

    title: str
    text: str = ""
    table: Sequence[Sequence[object]] = ()
    images: Sequence[tuple[str, bytes | None]] = field(default_factory=list)


_STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0}td,th{padding:.25em .7em;border-bottom:1px solid #eee;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f5f5f5}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#666;font-size:.9em}
.meta{color:#666}"""

_SCRIPT = """window.addEventListener("load",function(){var i=Array.prototype.slice.call(document.images);
document.body.setAttribute("data-images",i.length);
document.body.setAttribute("data-images-loaded",i.filter(function(x){return x.complete&&x.naturalWidth>0}).length)
});"""


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _table(rows: Sequence[Sequence[object]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(_cell(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(path: str | Path, title: str, sections: Sequence[Section], subtitle: str = "") -> Path:
    """Write the page atomically and return its path. Images that are None (no matplotlib) are left out."""
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class=meta>{html.escape(subtitle)} Written {time.strftime('%Y-%m-%d %H:%M')} by cnnzip.</p>"]
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        parts.append(_table(s.table))
        for caption, png in s.images:
            if png:
                data = base64.b64encode(png).decode()
                parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</section>")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>{''.join(parts)}</body></html>\n")
    atomic_write_text(path, page)
    return Path(path)
