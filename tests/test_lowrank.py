"""Low-rank decomposition: Tucker-2 convolutions, SVD for 1x1 convs and linear layers."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from _fresh import outputs_in_a_fresh_process
from cnnzip.errors import ConfigError
from cnnzip.io import ModelMeta, save_model
from cnnzip.lowrank import Decomposition, decompose, energy_rank
from cnnzip.measure import count_macs
from cnnzip.models import FactoredConv2d, FactoredLinear, create_model

SHAPE = (3, 32, 32)
EXAMPLE = torch.zeros(1, *SHAPE)


def full_ranks(model):
    ranks = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            ranks[name] = (min(m.in_channels, m.out_channels * k), min(m.out_channels, m.in_channels * k)) \
                if k > 1 else (min(m.in_channels, m.out_channels),)
        elif isinstance(m, nn.Linear):
            ranks[name] = (min(m.in_features, m.out_features),)
    return ranks


def test_energy_rank_counts_the_squared_singular_values():
    s = torch.tensor([2.0, 1.0, 1.0])  # energies 4, 1, 1 of 6
    assert [energy_rank(s, e) for e in (0.5, 4 / 6, 0.7, 5 / 6, 1.0)] == [1, 1, 2, 2, 3]


def test_at_full_rank_the_decomposed_model_computes_the_original():
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25).eval()
    original = copy.deepcopy(model)
    result = decompose(model, Decomposition(ranks=full_ranks(model)), EXAMPLE)
    kinds = {type(m).__name__ for m in result.model.modules()}
    assert {"FactoredConv2d", "FactoredLinear"} <= kinds and not any(
        isinstance(m, nn.Conv2d) and n.split(".")[-1] not in ("reduce", "core", "expand")
        for n, m in result.model.named_modules())
    x = torch.randn(8, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), rtol=1e-4, atol=1e-5)
    assert result.error < 1e-5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values(),
                                                 strict=True))  # the caller's model is untouched


def test_a_layer_of_low_rank_is_recovered_exactly_at_its_rank():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=True)
    with torch.no_grad():  # rank 3 along the inputs, 2 along the outputs
        core = torch.randn(2, 3, 3, 3)
        conv.weight.copy_(torch.einsum("rskl,or,is->oikl", core, torch.randn(12, 2), torch.randn(8, 3)))
    linear = nn.Linear(12, 5)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(5, 2) @ torch.randn(2, 12))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear).eval()
    result = decompose(model, Decomposition(energy=0.9999), torch.zeros(1, 8, 6, 6))
    assert result.ranks == {"0": [3, 2], "4": [2]} and result.error < 1e-5
    assert isinstance(result.model[0], FactoredConv2d) and result.model[0].kind == "tucker2"
    assert isinstance(result.model[4], FactoredLinear) and result.macs[1] < result.macs[0]


def test_energy_and_a_macs_budget_choose_the_ranks():
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.5).eval()
    loose, tight = (decompose(model, Decomposition(energy=e), EXAMPLE) for e in (0.9, 0.6))
    assert tight.macs[1] < loose.macs[1] < loose.macs[0]
    for result in (loose, tight):  # factored only where it pays
        assert count_macs(result.model, SHAPE) == result.macs[1]
    budget = decompose(model, Decomposition(macs_reduction=0.45), EXAMPLE)
    assert 0.45 <= 1 - budget.macs[1] / budget.macs[0] < 0.5 and 0 < budget.energy < 1


def test_round_to_rounds_every_rank_up_to_a_multiple_or_the_full_rank():
    """round_to=8: each rank the energy picks is rounded up to a multiple of 8 (capped at the layer's full rank),
    so the thin layers suit CPU kernels' channel blocks; with a MACs budget the energy is found with the rounding."""
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.5).eval()
    full = full_ranks(model)
    plain = decompose(copy.deepcopy(model), Decomposition(energy=0.6), EXAMPLE)
    rounded = decompose(copy.deepcopy(model), Decomposition(energy=0.6, round_to=8), EXAMPLE)
    assert any(r % 8 for ranks in plain.ranks.values() for r in ranks)  # the rounding has something to do
    assert rounded.ranks and all(r % 8 == 0 or r == top for name, ranks in rounded.ranks.items()
                                 for r, top in zip(ranks, full[name], strict=True))
    budget = decompose(copy.deepcopy(model), Decomposition(macs_reduction=0.45, round_to=8), EXAMPLE)
    assert 1 - budget.macs[1] / budget.macs[0] >= 0.45
    assert all(r % 8 == 0 or r == top for name, ranks in budget.ranks.items()
               for r, top in zip(ranks, full[name], strict=True))
    with pytest.raises(ConfigError, match="round_to"):
        Decomposition(energy=0.9, round_to=0)


def test_a_decomposed_model_reloads_in_a_fresh_process_and_exports_to_onnx(tmp_path):
    torch.manual_seed(0)
    result = decompose(create_model("resnet20", width=0.25).eval(), Decomposition(energy=0.8), EXAMPLE)
    path = save_model(tmp_path / "lr.pt", result.model, ModelMeta((0.5,) * 3, (0.25,) * 3, SHAPE))
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        expected = result.model(x)
    assert torch.equal(outputs_in_a_fresh_process(path, x, tmp_path), expected)
    ort = pytest.importorskip("onnxruntime")
    from cnnzip.deploy import export_onnx

    onnx_path = export_onnx(result.model, tmp_path / "lr.onnx", SHAPE)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_bad_input_gets_one_clear_error():
    model = create_model("resnet20", width=0.25).eval()
    with pytest.raises(ConfigError, match="exactly one"):
        Decomposition()
    with pytest.raises(ConfigError, match="exactly one"):
        Decomposition(energy=0.9, macs_reduction=0.4)
    with pytest.raises(ConfigError, match=r"energy.*\(0, 1\]"):
        Decomposition(energy=1.5)
    with pytest.raises(ConfigError, match="layer1.0.conv1.*between 1 and"):
        decompose(model, Decomposition(ranks={"layer1.0.conv1": (99, 2)}), EXAMPLE)
    with pytest.raises(ConfigError, match="'layer9'"):
        decompose(model, Decomposition(ranks={"layer9": (2,)}), EXAMPLE)
    with pytest.raises(ConfigError, match="no conv or linear"):
        decompose(nn.Sequential(nn.Flatten()), Decomposition(energy=0.5), EXAMPLE)
