"""PCA width and depth selection (the third paper's first stage)."""


import pytest
import torch
from torch import nn

from _fresh import outputs_in_a_fresh_process
from cnnzip.errors import ConfigError, ModelError
from cnnzip.io import ModelMeta, save_model
from cnnzip.models import create_model
from cnnzip.prune import ChannelPruning, analyze, prune_channels
from cnnzip.prune.pca import PcaPruning, activation_spectra, pca_plan, pca_prune, significant_components

SHAPE = (3, 32, 32)


def images(n: int = 256, shape=SHAPE, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, *shape, generator=g) for _ in range(n // 64)]


def test_significant_components_reach_the_variance_share():
    eig = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert [significant_components(eig, v) for v in (0.4, 0.7, 0.71, 0.9, 1.0)] == [1, 2, 3, 3, 4]
    assert significant_components(torch.zeros(5), 0.99) == 1  # a dead layer spans nothing


def test_pca_finds_the_rank_activations_were_built_with():
    """A 1x1 conv whose 8 filters are mixtures of 2 gives activations of rank 2: PCA keeps 2 channels."""
    torch.manual_seed(0)
    first = nn.Conv2d(3, 8, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_((torch.randn(8, 2) @ torch.randn(2, 3)).view(8, 3, 1, 1))
    model = nn.Sequential(first, nn.Conv2d(8, 6, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 3)).eval()
    data = images(128, (3, 8, 8))
    graph = analyze(model, torch.zeros(1, 3, 8, 8))
    spectra = activation_spectra(graph, data, 128)
    assert spectra["0"].samples == 128 * 64 and spectra["0"].reader == "1"
    assert float(spectra["0"].eigenvalues[2:].max()) < 1e-9 * float(spectra["0"].eigenvalues[0])
    plan = pca_plan(model, PcaPruning(variance=0.999), data, torch.zeros(1, 3, 8, 8))
    assert plan.widths["0"] == 2
    assert spectra["1"].reader == "4" and spectra["1"].positions == 1  # read by the linear, behind the pool
    result = pca_prune(model, PcaPruning(variance=0.999), data, torch.zeros(1, 3, 8, 8))
    assert result.model[0].out_channels == 2 and result.model[1].in_channels == 2
    assert result.dropped == [] and result.model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def vgg_with_a_layer_to_drop() -> nn.Module:
    torch.manual_seed(2)  # at this seed, on these images, one layer of VGG-11 adds no dimensions
    return create_model("vgg11", width=0.125).eval()


def test_pca_through_a_flatten_takes_every_position_as_a_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 2)).eval()
    data = images(128, (3, 4, 4))
    spectra = activation_spectra(analyze(model, torch.zeros(1, 3, 4, 4)), data, 128)
    with torch.no_grad():
        acts = torch.cat([model[1](model[0](x)) for x in data])  # (N, 5, 4, 4)
    rows = acts.permute(0, 2, 3, 1).reshape(-1, 5).double()
    expected = torch.linalg.eigvalsh(torch.cov(rows.T)).flip(0)
    assert spectra["0"].reader == "3" and spectra["0"].positions == 16 and spectra["0"].samples == 128 * 16
    assert torch.allclose(spectra["0"].eigenvalues, expected.clamp_min(0), rtol=1e-9, atol=1e-12)


def test_the_pca_vgg_has_the_reported_widths_and_depth_and_reloads_in_a_fresh_process(tmp_path):
    model = vgg_with_a_layer_to_drop()
    config = PcaPruning(variance=0.99, images=256)
    result = pca_prune(model, config, images(), torch.zeros(1, *SHAPE))
    plan = result.plan
    assert [r.name for r in plan.layers] == [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert result.dropped == plan.dropped == ["feature.11"]
    by_name = {r.name: r for r in plan.layers}
    names = [f"feature.{i}" for i in range(len(model.feature))]
    for name in result.dropped:  # not above the layer it reads, with no pool between them
        reads = by_name[name].reads
        assert by_name[name].pca_width <= by_name[reads].pca_width
        between = model.feature[names.index(reads) + 1:names.index(name)]
        assert not any(isinstance(m, nn.MaxPool2d) for m in between)
    kept = [r.pca_width for r in plan.layers if not r.drop]
    assert [m.out_channels for m in result.model.modules() if isinstance(m, nn.Conv2d)] == kept
    assert result.model.classifier.in_features == kept[-1]
    assert result.model.cnnzip_spec["cfg"].count("M") == 4 and len(result.model.cnnzip_spec["cfg"]) == 4 + len(kept)
    assert all(0.99 <= r.variance_kept <= 1 for r in plan.layers)
    assert "PCA width" in plan.table() and "feature.11" in plan.table(result.dropped)
    assert "removed" in plan.table(result.dropped) and "removed" not in plan.table()
    # New weights: nothing is the original's (the first layer keeps all its channels, yet differs).
    assert not torch.equal(result.model.feature[0].weight, model.feature[0].weight)
    meta = ModelMeta((0.5,) * 3, (0.25,) * 3)
    path = save_model(tmp_path / "pca.pt", result.model, meta)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(outputs_in_a_fresh_process(path, x, tmp_path), result.model.eval()(x))


def test_inherit_keeps_the_surviving_weights_of_the_largest_channels():
    model = vgg_with_a_layer_to_drop()
    config = PcaPruning(variance=0.99, images=256, depth=False)
    result = pca_prune(model, config, images(), torch.zeros(1, *SHAPE), inherit=True)
    narrowed = prune_channels(model, ChannelPruning(method="l1", widths=result.plan.widths),
                              torch.zeros(1, *SHAPE)).model
    assert result.dropped == [] and "classifier" in result.inherited
    for a, b in zip(result.model.state_dict().values(), narrowed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    deeper = pca_prune(model, PcaPruning(variance=0.99, images=256), images(), torch.zeros(1, *SHAPE),
                       inherit=True)
    assert deeper.dropped == ["feature.11"]
    # The conv after the removed one learned to read other channels: new weights, and new statistics for its
    # BatchNorm, even where the shapes happen to agree. Every other layer is the narrowed original's.
    built = dict(deeper.model.named_modules())  # the pool moved up: built feature.12 is the original's feature.15
    assert "feature.12" not in deeper.inherited and "feature.13" not in deeper.inherited
    assert built["feature.12"].weight.shape == narrowed.feature[15].weight.shape  # the shapes happen to agree
    assert not torch.equal(built["feature.12"].weight, narrowed.feature[15].weight)
    for name in ("feature.0", "feature.1", "feature.8", "feature.9", "feature.15", "feature.16", "classifier"):
        assert name in deeper.inherited
    assert torch.equal(built["feature.15"].weight, narrowed.feature[18].weight)
    assert torch.equal(built["feature.16"].running_mean, narrowed.feature[19].running_mean)


def test_residual_networks_narrow_inner_widths_and_drop_no_layer():
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.5).eval()
    result = pca_prune(model, PcaPruning(variance=0.95, images=128), images(128), torch.zeros(1, *SHAPE))
    assert result.dropped == [] and not any(r.drop for r in result.plan.layers)
    assert all(r.name.endswith("conv1") and r.name != "conv1" for r in result.plan.layers)
    assert result.model(torch.randn(2, *SHAPE)).shape == (2, 10)
    streams = pca_plan(model, PcaPruning(variance=0.95, images=128, residual_stream=True), images(128),
                       torch.zeros(1, *SHAPE))
    assert len(streams.layers) > len(result.plan.layers) and not streams.dropped  # streams narrowed, no layer goes


def test_bad_input_gets_one_clear_error():
    with pytest.raises(ConfigError, match="variance"):
        PcaPruning(variance=0)
    with pytest.raises(ConfigError, match="variance"):
        PcaPruning(variance=1.5)
    with pytest.raises(ModelError, match="conv layers"):
        pca_plan(nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 2)), PcaPruning(),
                 [torch.randn(4, 3, 2, 2)], torch.zeros(1, 3, 2, 2))
    model = create_model("vgg11", width=0.25).eval()
    with pytest.raises(ConfigError, match="too few samples.*more images"):
        pca_plan(model, PcaPruning(images=2), images(64), torch.zeros(1, *SHAPE))
    with pytest.raises(ConfigError, match="image tensors"):
        pca_plan(model, PcaPruning(images=64), [{"image": torch.zeros(2, *SHAPE)}], torch.zeros(1, *SHAPE))
    with pytest.raises(ModelError, match="cfg"):
        create_model("vgg11", cfg=["M", 0])
    with pytest.raises(ModelError, match="cfg"):
        create_model("vgg11", cfg=["M"])
    loaded = create_model("vgg11", cfg=[8, "M", 16])
    assert [m.out_channels for m in loaded.modules() if isinstance(m, nn.Conv2d)] == [8, 16]


class Killed(Exception):
    pass


def test_mixed_pruning_chains_pca_training_and_fpgm_and_resumes_after_a_kill(tmp_path):
    from cnnzip.measure import Evaluator
    from cnnzip.prune.mixed import MixedPruning, mixed_prune
    from cnnzip.train import TrainConfig, fit

    torch.manual_seed(0)
    model = create_model("vgg11", width=0.125).eval()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, *SHAPE, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(8)]
    val = Evaluator(data[:2])
    meta = ModelMeta((0.5,) * 3, (0.25,) * 3, SHAPE)
    config = MixedPruning(pca=PcaPruning(variance=0.99, images=256), ratio=0.3)
    calls = []

    def finetune(stage, m, hooks=(), *, tag=None, parameters=None):
        calls.append(stage)
        fit(m, data, TrainConfig(epochs=1, lr=0.05, seed=0), progress=False)

    def dying(stage, m, hooks=(), *, tag=None, parameters=None):
        finetune(stage, m)
        if stage == "fpgm":
            raise Killed

    whole = mixed_prune(model, config, data, finetune, meta, tmp_path / "whole", evaluator=val)
    assert calls == ["pca", "fpgm"] and whole.path.name == "pruned.pt"
    stages = whole.stages
    assert stages["fpgm"]["params"] < stages["pca"]["params"] < stages["original"]["params"]
    assert stages["fpgm"]["macs"] < stages["pca"]["macs"] < stages["original"]["macs"]
    assert [r["pca_width"] for r in whole.plan if not r["drop"]] == \
        [m.out_channels for m in load_model_of(tmp_path / "whole" / "pca.pt").modules() if isinstance(m, nn.Conv2d)]
    calls.clear()
    with pytest.raises(Killed):
        mixed_prune(model, config, data, dying, meta, tmp_path / "killed", evaluator=val)
    again = mixed_prune(model, config, data, finetune, meta, tmp_path / "killed", evaluator=val)
    assert calls == ["pca", "fpgm", "fpgm"]  # the trained PCA network was kept; only the FPGM stage reran
    for a, b in zip(again.model.state_dict().values(), whole.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert again.stages == whole.stages
    with pytest.raises(ConfigError, match="other settings|differ"):
        mixed_prune(model, MixedPruning(pca=config.pca, ratio=0.5), data, finetune, meta, tmp_path / "killed",
                    evaluator=val)
    with pytest.raises(ConfigError, match="ratio"):
        MixedPruning(ratio=1.0)


def load_model_of(path):
    from cnnzip.io import load_model

    return load_model(path)[0]
