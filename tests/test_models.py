"""Tests for cnnzip.models: every registered model builds and runs, sizes match the papers, checkpoints load."""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnzip.errors import ModelError
from cnnzip.models import create_model, list_models, load_weights
from cnnzip.models.resnet_cifar import BasicBlock, PadShortcut, resnet20

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
ALL_MODELS = list_models()

# Exact parameter counts at full width, 3 input channels, 10 classes: any change to an architecture shows here.
PARAMS = {
    "alexnet": 23_272_266,
    "densenet40": 1_059_298,
    "densenet121": 6_956_298,
    "densenet201": 18_104_330,
    "densenet_bc_100": 769_162,
    "mobilenetv2": 2_296_922,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "shufflenetv2": 1_263_854,  # equal to kuangliu/pytorch-cifar's ShuffleNetV2(net_size=1)
    "small_cnn": 24_346,
    "vgg11": 9_228_362,
    "vgg13": 9_413_066,
    "vgg16": 14_724_042,
    "vgg19": 20_035_018,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shared_checkpoint(name: str) -> Path:
    path = SHARED / "models" / CHECKPOINTS[name]
    if not path.is_file():
        pytest.skip(f"shared checkpoint {path} not available")
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- registry -----------------------------------------------------------------------------------------------


def test_registry_lists_every_family() -> None:
    assert set(ALL_MODELS) == set(PARAMS)
    assert list_models("resnet*") == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    assert list_models("vgg*") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert list_models("nothing*") == []


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ModelError, match="unknown model 'resnet57'") as info:
        create_model("resnet57")
    assert "resnet56" in str(info.value)
    assert "vgg19" in str(info.value)  # the full list is part of the message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0}, "width"),
        ({"width": -0.5}, "width"),
        ({"width": float("nan")}, "width"),
        ({"width": "wide"}, "width"),
        ({"shortcut": "C"}, "shortcut"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"depth": 20}, "does not take argument 'depth'"),
    ],
)
def test_bad_arguments_raise_model_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        create_model("resnet20", **kwargs)


def test_shortcut_is_only_for_resnets() -> None:
    with pytest.raises(ModelError, match="shortcut"):
        create_model("vgg11", shortcut="B")


# --- every model --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shape(name: str, num_classes: int) -> None:
    model = create_model(name, num_classes=num_classes, width=0.25)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)  # training mode: BN uses batch statistics
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.equal(model.forward_head(feats), model(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_full_width_parameter_count(name: str) -> None:
    assert n_params(create_model(name)) == PARAMS[name]


def test_parameter_counts_match_papers() -> None:
    assert n_params(create_model("resnet56")) == pytest.approx(0.85e6, abs=0.01e6)
    assert n_params(create_model("resnet20")) == pytest.approx(0.27e6, abs=0.005e6)
    assert n_params(create_model("vgg19")) == pytest.approx(20.04e6, abs=0.01e6)
    assert 1.0e6 <= n_params(create_model("densenet40")) <= 1.1e6
    assert 0.7e6 <= n_params(create_model("densenet_bc_100")) <= 0.85e6


def test_resnet56_macs() -> None:
    model = create_model("resnet56").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    macs = counter.get_total_flops() / 2
    assert macs == pytest.approx(125e6, rel=0.03)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_spec_round_trip_and_copies(name: str) -> None:
    model = create_model(name, num_classes=7, width=0.25)
    spec = model.cnnzip_spec
    assert spec == {"name": name, "num_classes": 7, "width": 0.25}
    rebuilt = create_model(**spec)
    assert n_params(rebuilt) == n_params(model)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(clone(x), expected)
            assert clone.cnnzip_spec == spec


def test_builder_called_directly_records_spec() -> None:
    assert resnet20(100, shortcut="B").cnnzip_spec == {
        "name": "resnet20",
        "num_classes": 100,
        "shortcut": "B",
    }
    assert resnet20().cnnzip_spec == {"name": "resnet20", "num_classes": 10}


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "densenet40", "mobilenetv2", "alexnet", "small_cnn",
                                  "shufflenetv2"])
def test_width_multiplier_shrinks(name: str) -> None:
    full, half, quarter = (n_params(create_model(name, width=w)) for w in (1.0, 0.5, 0.25))
    assert quarter < half < full
    tiny = create_model(name, width=0.01)  # every width rounds to at least one channel
    assert tiny(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "densenet_bc_100", "mobilenetv2", "alexnet", "shufflenetv2"])
def test_other_input_sizes_and_channels(name: str) -> None:
    model = create_model(name, in_channels=1, width=0.25).eval()
    with torch.no_grad():
        for size in (24, 40):
            assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_small_cnn_on_digits() -> None:
    model = create_model("small_cnn", in_channels=1)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert create_model("small_cnn")(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# --- architecture details -----------------------------------------------------------------------------------


def test_resnet_module_names_and_shortcuts() -> None:
    model = create_model("resnet20")
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3) for b in layer]
    assert len(blocks) == 9 and all(isinstance(b, BasicBlock) for b in blocks)
    down = {0 + 3, 0 + 6}  # first block of stages 2 and 3
    for i, block in enumerate(blocks):
        expected = PadShortcut if i in down else nn.Identity
        assert type(block.shortcut) is expected
    assert isinstance(model.linear, nn.Linear)


def test_pad_shortcut_matches_option_a() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])  # planes//4 = 8 zero channels on each side
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_basic_block_forward_formula() -> None:
    block = BasicBlock(16, 32, stride=2).eval()
    x = torch.randn(2, 16, 8, 8)
    relu = torch.relu
    with torch.no_grad():
        expected = relu(block.bn2(block.conv2(relu(block.bn1(block.conv1(x))))) + block.shortcut(x))
        assert torch.equal(block(x), expected)


def test_shortcut_b_uses_projection() -> None:
    a, b = create_model("resnet20"), create_model("resnet20", shortcut="B")
    assert isinstance(b.layer2[0].shortcut[0], nn.Conv2d)
    assert n_params(b) > n_params(a)
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_dense_layers_concatenate_their_input() -> None:
    model = create_model("densenet40").eval()
    layer = model.dense1[0]
    x = torch.randn(2, 24, 8, 8)
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (2, 24 + 12, 8, 8)
    assert torch.equal(out[:, :24], x)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_onnx_export(name: str) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = create_model(name, width=0.25).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, 3, 32, 32),),
            buf,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    x = torch.randn(3, 3, 32, 32)
    (got,) = ort.InferenceSession(buf.getvalue()).run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    # Untrained deep nets in eval mode reach large magnitudes, so compare relative to the largest output.
    assert torch.allclose(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


# --- load_weights -------------------------------------------------------------------------------------------


def test_load_plain_and_wrapped_state_dicts(tmp_path: Path) -> None:
    source = create_model("resnet20").eval()
    state = source.state_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(x)
    wrapped = {
        "plain": state,
        "state_dict": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "model": {"model": state},
    }
    for label, obj in wrapped.items():
        path = tmp_path / f"{label}.pt"
        torch.save(obj, path)
        for arg in (path, str(path), obj):
            target = create_model("resnet20").eval()
            assert load_weights(target, arg) is target
            with torch.no_grad():
                assert torch.equal(target(x), expected), label


def test_shape_mismatch_names_tensor_and_shapes() -> None:
    state = create_model("resnet20", num_classes=100).state_dict()
    with pytest.raises(ModelError, match=r"linear.weight.*\(100, 64\).*\(10, 64\)") as info:
        load_weights(create_model("resnet20"), state)
    assert "strict=False" in str(info.value)


def test_unexpected_key_is_named() -> None:
    state = create_model("resnet20").state_dict()
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(ModelError, match="'extra.weight'"):
        load_weights(create_model("resnet20"), state)


def test_non_strict_loads_what_fits() -> None:
    source = create_model("resnet20", num_classes=100)
    target = create_model("resnet20")
    with pytest.warns(UserWarning, match="skipped 2 tensors"):
        load_weights(target, source.state_dict(), strict=False)
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert target.linear.weight.shape == (10, 64)
    with pytest.raises(ModelError, match="no tensor"):
        load_weights(create_model("vgg11"), source.state_dict(), strict=False)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        load_weights(create_model("resnet20"), tmp_path / "absent.th")
    with pytest.raises(ModelError, match="not a file"):
        load_weights(create_model("resnet20"), tmp_path)


class _NotATensor:
    """A class weights_only loading must refuse."""


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_garbage_file(tmp_path: Path) -> None:
    text = tmp_path / "garbage.th"
    text.write_bytes(b"this is not a torch file\x00\x01\x02" * 10)
    with pytest.raises(ModelError, match="garbage.th is not a PyTorch checkpoint"):
        load_weights(create_model("resnet20"), text)
    damaged = tmp_path / "damaged.th"
    damaged.write_bytes(b"\x80\x04 looks like a pickle but is not")
    with pytest.raises(ModelError, match="cannot read .*damaged.th as a PyTorch checkpoint"):
        load_weights(create_model("resnet20"), damaged)
    truncated = tmp_path / "truncated.th"
    buf = io.BytesIO()
    torch.save(create_model("resnet20").state_dict(), buf)
    truncated.write_bytes(buf.getvalue()[:5000])
    with pytest.raises(ModelError, match="cannot read .*truncated.th"):
        load_weights(create_model("resnet20"), truncated)


def test_file_with_code_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.pt"
    torch.save({"conv1.weight": _NotATensor()}, path)
    with pytest.raises(ModelError, match="refused.*would run code.*_NotATensor.*state_dict"):
        load_weights(create_model("resnet20"), path)


def test_file_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ModelError, match="not a state dict: entry 'epoch' is a int"):
        load_weights(create_model("resnet20"), path)
    with pytest.raises(ModelError, match="file path or a state dict"):
        load_weights(create_model("resnet20"), 42)  # type: ignore[arg-type]


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_shared_checkpoint_loads_strict(name: str) -> None:
    model = load_weights(create_model(name), shared_checkpoint(name), strict=True).eval()
    raw = torch.load(shared_checkpoint(name), map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.conv1.weight, raw["module.conv1.weight"])
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


@pytest.mark.shared
def test_shared_checkpoint_into_wrong_depth() -> None:
    with pytest.raises(ModelError, match=r"resnet20-12fca82f.th does not fit model 'resnet56'.*'layer1\.3\."):
        load_weights(create_model("resnet56"), shared_checkpoint("resnet20"))
    with pytest.raises(ModelError, match="shortcut"):  # option-B model: the hint names the likely cause
        load_weights(create_model("resnet20", shortcut="B"), shared_checkpoint("resnet20"))


class _RunsCode:
    """Unpickling this writes a file: the proof that a loader ran code it was handed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_file_that_would_run_code_is_refused_and_never_run(tmp_path):
    from cnnzip.io import load_any

    marker = tmp_path / "ran"
    torch.save({"state_dict": _RunsCode(str(marker))}, tmp_path / "zip.pt")
    with open(tmp_path / "legacy.pt", "wb") as f:
        pickle.dump(_RunsCode(str(marker)), f, protocol=2)
    for name in ("zip.pt", "legacy.pt"):
        with pytest.raises(ModelError, match="was refused: loading it would run code") as info:
            load_any(tmp_path / name, "resnet20")
        assert "weights_only" not in str(info.value) and "damaged" not in str(info.value)
    assert not marker.exists()
