import copy
import sys

import numpy as np
import pytest
import torch
from torch import nn

from cnnzip.deploy import compare_latency, export_onnx, measure_onnx_latency, onnx_session
from cnnzip.errors import CnnzipError, ConfigError
from cnnzip.measure import Latency
from cnnzip.models import create_model

# cnnzip.deploy imports without the optional extra; its functions need both packages.
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ZOO = [
    ("resnet20", {"width": 0.5}, (3, 32, 32)),
    ("small_cnn", {"in_channels": 1}, (1, 8, 8)),
]


def _ort_output(session, x: torch.Tensor) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _eager_output(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        y = model(x).numpy()
    model.train(was_training)
    return y


@pytest.mark.parametrize(("name", "kwargs", "shape"), ZOO, ids=[z[0] for z in ZOO])
def test_zoo_model_round_trips_with_dynamic_batch_and_caller_model_untouched(tmp_path, name, kwargs, shape):
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    path = export_onnx(model, tmp_path / "sub" / f"{name}.onnx", shape)

    assert path == tmp_path / "sub" / f"{name}.onnx" and path.stat().st_size > 0
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    session = onnx_session(path)
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic batch dimension
    g = torch.Generator().manual_seed(1)
    for batch in (1, 5):
        x = torch.randn((batch, *shape), generator=g)
        expected = _eager_output(model, x)
        actual = _ort_output(session, x)
        assert actual.shape == expected.shape == (batch, 10)
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_static_batch_export_takes_batch_one_only(tmp_path):
    model = create_model("small_cnn", in_channels=1)
    path = export_onnx(model, tmp_path / "static.onnx", (1, 8, 8), dynamic_batch=False, opset=13)
    assert onnx_session(path).get_inputs()[0].shape == [1, 1, 8, 8]
    with pytest.raises(ConfigError, match="takes input of shape"):
        measure_onnx_latency(path, (1, 8, 8), batch_size=2, repeats=1)


class _ReturnsScalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return float(self.fc(x.flatten(1)).sum())


class _UnsupportedOp(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x.flatten(1).reshape(-1, 2, 2)).real


class _NoiseInEval(nn.Module):
    """Exports fine, but ONNX Runtime draws different noise than PyTorch: only verification can catch it."""

    def forward(self, x):
        x = x.flatten(1)
        return x + torch.rand_like(x)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_ReturnsScalar(), "returns one tensor"),
        (_UnsupportedOp(), "linalg_eigvals"),
        (_NoiseInEval(), r"differs from PyTorch's by up to \d"),
    ],
    ids=["python-scalar", "unsupported-op", "output-mismatch"],
)
def test_bad_export_is_a_cnnzip_error_and_leaves_no_file(tmp_path, model, message):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")
    with pytest.raises(CnnzipError, match=message):
        export_onnx(model, target, (4, 1, 1))
    assert target.read_bytes() == b"previous export"  # the old file survives a failed export
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_bad_settings_are_config_errors(tmp_path):
    model = create_model("small_cnn", in_channels=1)
    with pytest.raises(ConfigError):
        export_onnx(model, tmp_path / "m.onnx", (1, 0, 8))
    with pytest.raises(ConfigError):
        export_onnx(model, tmp_path / "m.onnx", (1, 8, 8), opset=3)
    with pytest.raises(CnnzipError, match="input_shape"):
        export_onnx(model, tmp_path / "m.onnx", (3, 8, 8))  # the model takes one channel
    with pytest.raises(CnnzipError, match="no ONNX file"):
        onnx_session(tmp_path / "missing.onnx")
    path = export_onnx(model, tmp_path / "m.onnx", (1, 8, 8))
    with pytest.raises(ConfigError):
        onnx_session(path, threads=0)
    with pytest.raises(ConfigError):
        measure_onnx_latency(path, (1, 8, 8), repeats=0)
    with pytest.raises(ConfigError):
        compare_latency(model, (1, 8, 8), batch_sizes=())


def test_missing_onnxruntime_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(CnnzipError, match=r"pip install 'cnnzip\[onnx\]'"):
        export_onnx(create_model("small_cnn", in_channels=1), tmp_path / "m.onnx", (1, 8, 8))


def test_session_uses_torch_thread_count_by_default(tmp_path):
    path = export_onnx(create_model("small_cnn", in_channels=1), tmp_path / "m.onnx", (1, 8, 8))
    assert onnx_session(path).get_session_options().intra_op_num_threads == torch.get_num_threads()
    assert onnx_session(path, threads=1).get_session_options().intra_op_num_threads == 1


def test_measure_onnx_latency_takes_a_path_or_a_session(tmp_path):
    path = export_onnx(create_model("small_cnn", in_channels=1), tmp_path / "m.onnx", (1, 8, 8))
    for source in (path, str(path), onnx_session(path)):
        lat = measure_onnx_latency(source, (1, 8, 8), batch_size=3, warmup=1, repeats=5)
        assert isinstance(lat, Latency)
        assert lat.batch_size == 3 and lat.repeats >= 5
        assert 0 < lat.min_ms <= lat.median_ms and lat.images_per_second > 0


def test_compare_latency_reports_both_runtimes_per_batch_size(tmp_path):
    model = create_model("small_cnn", in_channels=1)
    model.train()
    threads = torch.get_num_threads()
    rows = compare_latency(model, (1, 8, 8), batch_sizes=(1, 4), warmup=1, repeats=6, rounds=3, threads=1,
                           workdir=tmp_path)
    assert torch.get_num_threads() == threads  # restored
    assert model.training
    assert (tmp_path / "model.onnx").is_file()  # kept when a workdir is given
    assert [row["batch_size"] for row in rows] == [1, 4]
    for row in rows:
        for runtime in ("eager", "onnxruntime"):
            lat = row[runtime]
            assert isinstance(lat, Latency) and lat.batch_size == row["batch_size"]
            assert lat.repeats == 6 and lat.median_ms > 0
        assert row["speedup"] == pytest.approx(row["eager"].median_ms / row["onnxruntime"].median_ms)


def test_dynamo_exporter_when_onnxscript_is_installed(tmp_path):
    pytest.importorskip("onnxscript")
    model = create_model("small_cnn", in_channels=1)
    path = export_onnx(model, tmp_path / "m.onnx", (1, 8, 8), opset=18, exporter="dynamo")
    x = torch.randn(5, 1, 8, 8)
    np.testing.assert_allclose(_ort_output(onnx_session(path), x), _eager_output(model, x), atol=1e-4)


def test_latency_table_measures_every_model_in_both_runtimes():
    from cnnzip.report import latency_table

    models = {"wide": create_model("resnet20", width=0.5).eval(), "narrow": create_model("resnet20", width=0.25)}
    table = latency_table(models, (3, 32, 32), (1, 4), rounds=2, repeats=2)
    assert set(table) == {"wide", "narrow"}
    for row in table.values():
        assert set(row) == {"eager_ms_b1", "ort_ms_b1", "eager_ms_b4", "ort_ms_b4"}
        assert all(v > 0 for v in row.values())


def test_a_latency_table_times_each_layer_configuration_once_and_predicts_from_it(tmp_path):
    """build_latency_table: one entry per distinct conv/linear configuration on the width grid, the whole model
    timed, cached per architecture and machine; predict() = the model's time plus each layer's difference."""
    pytest.importorskip("onnxruntime")
    from cnnzip.deploy import LatencyTable, build_latency_table, layer_configs
    from cnnzip.models import create_model
    from cnnzip.prune import ChannelPruning, prune_channels

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, width=0.25).eval()
    configs = layer_configs(model, (3, 32, 32))
    assert len(configs) == 20 and configs["linear"].kind == "linear"  # 19 convs and the classifier
    table = build_latency_table(model, (3, 32, 32), 1, fractions=(0.5, 1.0), repeats=2, rounds=1, threads=1,
                                cache_dir=tmp_path)
    distinct = {c.key() for c in configs.values()}
    assert set(table.points) == distinct and all(len(v) == 4 for v in table.points.values())
    assert table.predict(model) == pytest.approx(table.base_ms)  # unpruned: the measured whole
    again = build_latency_table(model, (3, 32, 32), 1, fractions=(0.5, 1.0), repeats=2, rounds=1, threads=1,
                                cache_dir=tmp_path)
    assert again == table and len(list(tmp_path.glob("*.json"))) == 1  # read from the cache
    # The arithmetic, on known numbers: a layer at half its widths saves what its grid says.
    pruned = prune_channels(model, ChannelPruning(method="l1", ratio=0.5), torch.zeros(1, 3, 32, 32)).model
    key = table.layers["layer1.0.conv1"]
    known = LatencyTable(1, 1, 10.0, {"layer1.0.conv1": key},
                         {key: {"2,2": 1.0, "2,4": 2.0, "4,2": 3.0, "4,4": 4.0}})
    conv = dict(pruned.named_modules())["layer1.0.conv1"]
    expected = 10.0 + known.layer_ms("layer1.0.conv1", conv.in_channels, conv.out_channels) - 4.0
    assert known.predict(pruned) == pytest.approx(expected)
    assert known.layer_ms("layer1.0.conv1", 3, 3) == pytest.approx(2.5)  # bilinear between the four corners
    # A removed block's layers take their full-width time with them; a layer a factorisation replaced is not modelled.
    from cnnzip.models import remove_blocks
    gone = remove_blocks(copy.deepcopy(model), ["layer1.0"])
    assert known.predict(gone) == pytest.approx(10.0 - 4.0)


def test_an_int8_latency_table_times_quantized_layers_and_is_cached_apart(tmp_path):
    """precision='int8': the same layer configurations, timed as int8 QDQ files (as `cnnzip quantize` writes them),
    cached under their own key beside the fp32 table."""
    pytest.importorskip("onnxruntime")
    from cnnzip.deploy import build_latency_table
    from cnnzip.models import create_model

    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1).eval()
    fp32 = build_latency_table(model, (1, 8, 8), 1, fractions=(0.5, 1.0), repeats=2, rounds=1, threads=1,
                               cache_dir=tmp_path)
    int8 = build_latency_table(model, (1, 8, 8), 1, fractions=(0.5, 1.0), repeats=2, rounds=1, threads=1,
                               cache_dir=tmp_path, precision="int8")
    assert int8.precision == "int8" and fp32.precision == "fp32"
    assert set(int8.points) == set(fp32.points) and int8.points != fp32.points
    assert len(list(tmp_path.glob("*.json"))) == 2
    with pytest.raises(ConfigError, match="precision"):
        build_latency_table(model, (1, 8, 8), 1, precision="int4", cache_dir=tmp_path)


def test_a_layer_time_is_its_kernels_without_the_layout_conversions_a_whole_model_pays_once(tmp_path):
    """Alone, a conv pays NCHWc reorders on both sides; inside a model it does not (only its output reorder, at a
    width that is not a multiple of the kernels' channel block). The table counts what the model pays."""
    import json

    from cnnzip.deploy.latency_table import _kernel_ms

    def event(node, op, us):
        return {"cat": "Node", "name": f"{node}_kernel_time", "dur": us, "args": {"op_name": op}}

    runs = [(9000, 1800, 1100), (1000, 1700, 1000), (1000, 1900, 1200), (1100, 1800, 1100)]  # first run: warm-up
    events = [e for conv, rin, rout in runs for e in (event("in", "ReorderInput", rin), event("conv", "Conv", conv),
                                                      event("out", "ReorderOutput", rout))]
    events.append({"cat": "Session", "name": "model_run", "dur": 99999})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))

    class Session:
        def end_profiling(self):
            return str(path)

    assert _kernel_ms(Session(), warmup=1) == pytest.approx(1.0)
    assert _kernel_ms(Session(), warmup=1, output_reorder=True) == pytest.approx(1.0 + 1.1)


def test_the_default_grid_times_every_width_a_round_to_8_plan_can_give_a_32_channel_layer(tmp_path):
    """Eighths of each width: with round_to 8, a 32-channel conv is timed at 8, 16, 24 and 32 channels on each
    side, so that 24 (not a multiple of AVX-512's 16-channel block, and slower for it) is measured, not
    interpolated."""
    pytest.importorskip("onnxruntime")
    from cnnzip.deploy import build_latency_table

    model = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1)).eval()
    table = build_latency_table(model, (32, 4, 4), 1, round_to=8, repeats=1, rounds=1, threads=1, cache_dir=tmp_path)
    (grid,) = table.points.values()
    assert sorted(grid) == sorted(f"{a},{b}" for a in (8, 16, 24, 32) for b in (8, 16, 24, 32))
