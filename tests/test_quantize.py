"""int8 post-training quantization in ONNX Runtime: agreement with fp32, the per-layer fallback, the CLI."""

import json

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

import cnnzip  # noqa: E402
from cnnzip.cli import main  # noqa: E402
from cnnzip.data import Loader, load_digits, train_val_split  # noqa: E402
from cnnzip.deploy import OnnxModel, export_onnx, stamp_meta  # noqa: E402
from cnnzip.errors import ConfigError  # noqa: E402
from cnnzip.io import ModelMeta  # noqa: E402
from cnnzip.measure import Evaluator  # noqa: E402
from cnnzip.quantize import PostTraining, quantize_onnx, quantize_to_target, top1_agreement  # noqa: E402
from cnnzip.train import TrainConfig, fit  # noqa: E402


class Net(nn.Module):
    """A user's own model (not from the zoo)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def digits():
    ds = load_digits()
    train, val = train_val_split(ds.train, val_size=0.2, seed=0)
    torch.manual_seed(0)
    model = Net()
    fit(model, Loader(train, 64, shuffle=True, mean=ds.mean, std=ds.std), TrainConfig(epochs=30, lr=0.1),
        progress=False)
    meta = ModelMeta(ds.mean, ds.std, (1, 8, 8), ds.classes)
    calibration = [x.numpy() for x, _ in Loader(train.take(256), 32, mean=ds.mean, std=ds.std)]
    return model.eval(), meta, calibration, Evaluator(Loader(val, 500, mean=ds.mean, std=ds.std))


def _export(model, meta, path):
    export_onnx(model, path, meta.input_shape)
    stamp_meta(path, meta)
    return path


def test_int8_file_runs_in_onnx_runtime_and_agrees_with_fp32(digits, tmp_path):
    model, meta, calibration, val = digits
    fp32 = _export(model, meta, tmp_path / "m.fp32.onnx")
    result = quantize_onnx(fp32, tmp_path / "m.int8.onnx", calibration, PostTraining())
    assert result.kept_fp32 == [] and result.not_quantized == []
    import onnx

    graph = onnx.load(str(result.path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("Conv") == 2  # activations quantized, QDQ around convs
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) == 2  # both conv weights stored as int8 (per channel)
    loaded, loaded_meta = cnnzip.load(result.path)  # the one door reads it, as a model that runs in ONNX Runtime
    assert isinstance(loaded, OnnxModel) and loaded_meta.input_shape == (1, 8, 8)
    reference = OnnxModel(fp32)
    batches = [x.numpy() for x, _ in val.batches]
    agreement = top1_agreement(lambda x: reference(torch.from_numpy(x)).numpy(),
                               lambda x: loaded(torch.from_numpy(x)).numpy(), batches)
    assert agreement >= 0.97
    assert abs(val.evaluate(loaded).accuracy - val.evaluate(model).accuracy) <= 0.02
    with pytest.raises(ConfigError, match="calibration set is empty"):
        quantize_onnx(fp32, tmp_path / "x.onnx", [], PostTraining())


def test_the_fallback_keeps_the_one_sensitive_layer_in_fp32(digits, tmp_path):
    model, meta, calibration, val = digits
    # The same function, with its busiest channel of conv1's output 1000x larger (and conv2 reading it 1000x
    # smaller): per-tensor int8 activations into conv2 then crush every other channel. Only conv2's input suffers.
    sensitive = Net()
    sensitive.load_state_dict(model.state_dict())
    with torch.no_grad():
        busiest = int(torch.relu(model.conv1(torch.from_numpy(calibration[0]))).mean(dim=(0, 2, 3)).argmax())
        sensitive.conv1.weight[busiest] *= 1000
        sensitive.conv1.bias[busiest] *= 1000
        sensitive.conv2.weight[:, busiest] /= 1000
    fp32 = _export(sensitive.eval(), meta, tmp_path / "s.fp32.onnx")

    def accuracy_of(path):
        return val.evaluate(OnnxModel(path)).accuracy

    baseline = accuracy_of(fp32)
    result = quantize_to_target(fp32, tmp_path / "s.int8.onnx", calibration, PostTraining(), accuracy_of,
                                baseline - 0.02, workdir=tmp_path / "work")
    assert result.all_int8_accuracy < baseline - 0.05  # the outlier hurts all-int8 ...
    # ... and the tensor between conv1 and conv2 in fp32 (both ends of it) is enough, in one step.
    assert max(result.sensitivity, key=result.sensitivity.get) == "/conv2/Conv"
    assert result.met and sorted(result.kept_fp32) == ["/conv1/Conv", "/conv2/Conv"] and len(result.steps) == 1
    assert result.accuracy == accuracy_of(result.path) >= baseline - 0.02


def test_quantize_command_eval_info_and_refusals(tmp_path, digits_model, capsys):
    model = digits_model(6)
    out = tmp_path / "q"
    assert main(["quantize", str(model), "--out", str(out), "--latency-batches", "1,8", "--latency-rounds", "1",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "top-1 agreement" in text and (out / "model.int8.onnx").exists() and (out / "report.html").exists()
    assert main(["eval", str(out / "model.int8.onnx"), "--quiet"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["info", str(out / "model.int8.onnx"), "--batch-sizes", "1", "--repeats", "2"]) == 0
    assert "ONNX Runtime" in capsys.readouterr().out
    assert main(["prune", str(out / "model.int8.onnx"), "--ratio", "0.3", "--out", str(tmp_path / "p"),
                 "--quiet"]) == 2
    assert "holds no PyTorch weights" in capsys.readouterr().err
    assert main(["quantize", str(model), "--calibration-images", "8", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "smaller than one calibration batch" in capsys.readouterr().err


def test_every_kind_of_cnnzip_file_quantizes(tmp_path, digits_model, capsys):
    """A deep-compressed file (dense after decoding) and a pruned one go through the same command."""
    model = digits_model(6)
    assert main(["deep-compress", str(model), "--sparsity", "0.5", "--conv-bits", "5", "--out", str(tmp_path / "dc"),
                 "--quiet"]) == 0
    assert main(["prune", str(model), "--ratio", "0.3", "--latency-batches", "none", "--out", str(tmp_path / "p"),
                 "--quiet"]) == 0
    for source in (tmp_path / "dc" / "model.cnnz", tmp_path / "p" / "pruned.pt"):
        out = tmp_path / f"q-{source.parent.name}"
        assert main(["quantize", str(source), "--out", str(out), "--latency-batches", "none", "--quiet"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["agreement"] >= 0.95  # with the fp32 export of that very file, on the validation split
        assert abs(report["rows"]["int8"]["validation accuracy"] - report["rows"]["fp32"]["validation accuracy"]) < 0.03


def test_quantization_aware_training_recovers_low_bit_weights_and_exports_what_it_trained(digits, tmp_path):
    from cnnzip.quantize import QuantizationAware, calibrate_ranges, prepare_qat, strip_qat

    model, meta, calibration, val = digits
    ds = load_digits()
    train, _ = train_val_split(ds.train, val_size=0.2, seed=0)
    batches = Loader(train, 64, shuffle=True, mean=ds.mean, std=ds.std)
    calib = [torch.from_numpy(x) for x in calibration]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # 3-bit weights: fake-quantizing the trained model (post-training) loses accuracy; two epochs of QAT win it back.
    fake = prepare_qat(model, QuantizationAware(weight_bits=3))
    calibrate_ranges(fake, calib)
    post_training = val.evaluate(fake).accuracy
    fit(fake, batches, TrainConfig(epochs=2, lr=0.01), progress=False)
    calibrate_ranges(fake, calib)
    aware = val.evaluate(fake).accuracy
    assert aware >= post_training + 0.02, (post_training, aware)
    # 8-bit QAT: the ONNX Runtime int8 file computes what the fake-quantized model computes.
    fake8 = prepare_qat(model, QuantizationAware())
    fit(fake8, batches, TrainConfig(epochs=1, lr=0.01), progress=False)
    calibrate_ranges(fake8, calib)
    plain = strip_qat(fake8).eval()
    assert not any(type(m).__name__ == "FakeQuantized" for m in plain.modules())
    int8 = OnnxModel(quantize_onnx(_export(plain, meta, tmp_path / "qat.onnx"), tmp_path / "qat.int8.onnx",
                                   calibration, PostTraining()).path)
    xs = torch.cat([x for x, _ in val.batches])
    with torch.no_grad():
        agreement = float((fake8.eval()(xs).argmax(1) == int8(xs).argmax(1)).float().mean())
    assert agreement >= 0.98
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched
    with pytest.raises(ConfigError, match="weight_bits"):
        QuantizationAware(weight_bits=1)


def test_quantize_command_with_qat(tmp_path, digits_model, capsys):
    model = digits_model(6)
    assert main(["quantize", str(model), "--weight-bits", "4", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "needs quantization-aware training" in capsys.readouterr().err
    out = tmp_path / "qat"
    assert main(["quantize", str(model), "--qat-epochs", "1", "--weight-bits", "4", "--latency-batches", "none",
                 "--out", str(out), "--quiet"]) == 0
    assert "agreement of int8 with the fake-quantized model" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["qat"] == {"epochs": 1, "weight_bits": 4} and report["agreement"] >= 0.95
    assert (out / "model.qat-fp32.onnx").exists()


def test_search_with_int8_as_the_last_step(tmp_path, digits_model, capsys):
    model = digits_model(6)
    args = ["search", str(model), "--order", "ns", "--structured", "l1", "--quantize", "int8", "--drop", "0.02",
            "--step", "0.2", "--max-ratio", "0.8", "--calibration-images", "64", "--out", str(tmp_path / "s"),
            "--quiet"]
    assert main(args) == 0
    result = json.loads((tmp_path / "s" / "result.json").read_text())
    best = tmp_path / "s" / "best.int8.onnx"
    assert result["path"] == str(best) and result["final_size"] == best.stat().st_size
    assert result["best"]["size"] == best.stat().st_size  # the size objective is the int8 file's
    loaded, _ = cnnzip.load(best)
    assert isinstance(loaded, OnnxModel) and result["final_accuracy"] >= result["target"]
    assert main([*args[:-3], "--order", "ns-dc", "--out", str(tmp_path / "t"), "--quiet"]) == 2
    assert "--order ns with --quantize int8" in capsys.readouterr().err


def test_search_for_the_fastest_int8_model(tmp_path, digits_model, monkeypatch):
    """--objective latency-b1: every passing candidate is timed beside the original; the winner is the fastest of
    them (not the smallest), the times are recorded, and a resumed search replays them without timing again."""
    model = digits_model(6)
    out = tmp_path / "fast"
    args = ["search", str(model), "--order", "ns", "--structured", "l1", "--quantize", "int8", "--drop", "0.02",
            "--strategy", "grid", "--step", "0.25", "--max-ratio", "0.75", "--calibration-images", "64",
            "--objective", "latency-b1", "--round-to", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    result = json.loads((out / "result.json").read_text())
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["objective"] == "latency-b1" for r in records)
    for r in records:
        assert (r["latency"] is not None and r["latency"] > 0) == r["passed"]
    fastest = min((r for r in records if r["passed"]), key=lambda r: (r["latency"], r["size"], r["index"]))
    assert result["best"]["index"] == fastest["index"] and result["best"]["latency"] == fastest["latency"]

    from cnnzip.search import Compressor

    def no_timing(*a, **k):
        raise AssertionError("a resumed search timed a recorded candidate again")

    monkeypatch.setattr(Compressor, "latency", no_timing)
    assert main(args) == 0  # the same command resumes the run
    assert [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()] == records
    assert json.loads((out / "result.json").read_text())["best"] == result["best"]


def test_latency_objective_needs_structured_pruning_alone():
    from cnnzip.search import Pipeline, SearchConfig

    with pytest.raises(ConfigError, match="--order ns"):
        SearchConfig(pipeline=Pipeline(order="ns-dc"), drop=0.01, objective="latency-b256")
    with pytest.raises(ConfigError, match="objective"):
        SearchConfig(pipeline=Pipeline(order="ns"), drop=0.01, objective="speed")
    with pytest.raises(ConfigError, match="round_to"):
        Pipeline(order="ns", round_to=0)
