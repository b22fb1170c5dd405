"""Dynamic pruning by channel sparsity, response distillation, and layer fusion (issue 6)."""

import copy
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _fresh import outputs_in_a_fresh_process
from cnnzip.data import Loader, load_digits, train_val_split
from cnnzip.deep import WeightSharing, load_compressed, save_compressed, share_weights
from cnnzip.distill import Distillation, distillation_loss
from cnnzip.errors import ConfigError
from cnnzip.io import ModelMeta, layer_widths, load_model, save_model
from cnnzip.measure import Evaluator, count_macs
from cnnzip.models import RemovedBlock, create_model, remove_blocks
from cnnzip.prune import analyze
from cnnzip.prune.block_removal import (
    BlockRemoval,
    choose_blocks,
    depth,
    fresh_copy,
    remove_thin_blocks,
    residual_blocks,
)
from cnnzip.prune.channel_sparsity import channel_sparsity
from cnnzip.prune.dynamic import DynamicPruning, ThresholdSearch, dynamic_prune, sparsity_plan
from cnnzip.train import TrainConfig, fit, recalibrate_batchnorm

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    ds = load_digits()
    train, val = train_val_split(ds.train, val_size=0.2, seed=0)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, width=0.5)
    batches = Loader(train, 64, shuffle=True, mean=ds.mean, std=ds.std)
    fit(model, batches, TrainConfig(epochs=4, lr=0.05), progress=False)
    meta = ModelMeta(ds.mean, ds.std, SHAPE, ds.classes)
    return model.eval(), batches, Evaluator(Loader(val, 500, mean=ds.mean, std=ds.std)), meta


def test_channel_sparsity_is_the_zero_fraction_where_the_channels_are_read(digits):
    model, _, val, _ = digits
    graph = analyze(model, torch.zeros(1, *SHAPE))
    sparsity = channel_sparsity(graph, val.batches)
    # By hand: the input of layer2.1.conv2 is relu(bn1(conv1(.))): its zero fraction per channel.
    seen = []
    handle = model.layer2[1].conv2.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    with torch.no_grad():
        for x, _ in val.batches:
            model(x)
    handle.remove()
    acts = torch.cat(seen)
    expected = (acts == 0).double().mean(dim=(0, 2, 3)).float()
    assert torch.allclose(sparsity["layer2.1.conv1"], expected, atol=1e-6)
    assert set(sparsity) == {g.name for g in graph.groups}
    assert all(((s >= 0) & (s <= 1)).all() for s in sparsity.values())


def test_threshold_search_follows_the_papers_rule():
    s = ThresholdSearch(0.5, 1.0)
    assert s.current == 0.75
    s.feedback(True)  # pass: P_u = 0.75, then P_c lowered by a quarter of [0.5, 0.75]
    assert (s.lower, s.upper, s.current) == (0.5, 0.75, 0.6875)
    s.feedback(False)  # fail: P_l = 0.6875, then P_c raised by half of [0.6875, 0.75]
    assert (s.lower, s.upper, s.current) == (0.6875, 0.75, 0.71875)
    s.feedback(False)
    assert not s.done and s.upper - s.lower == 0.03125
    s.feedback(True)
    assert s.done and s.upper == 0.734375


def test_sparsity_plan_keeps_the_least_sparse_channels():
    sparsity = {"a": torch.tensor([0.9, 0.2, 0.95, 0.99]), "b": torch.tensor([0.1, 0.3])}
    assert sparsity_plan(sparsity, 0.8) == {"a": [0, 2, 3]}
    assert sparsity_plan(sparsity, 0.8, min_channels=2) == {"a": [2, 3]}
    assert sparsity_plan(sparsity, 0.0, min_channels=1) == {"a": [0, 2, 3], "b": [1]}


def test_dynamic_pruning_shrinks_inner_widths_meets_the_target_and_resumes(digits, tmp_path):
    model, batches, val, meta = digits
    tags = []

    def finetune(stage, m, hooks=(), *, tag=None, parameters=None):
        assert stage in ("trial", "recover") and (stage == "recover") == tag.endswith("-recover")
        tags.append(tag)
        fit(m, batches, TrainConfig(epochs=1, lr=0.01), progress=False)

    config = DynamicPruning(drop=0.02, iterations=2)
    result = dynamic_prune(model, val, finetune, config, meta, tmp_path)
    assert result.macs[1] < result.macs[0] and result.accuracy >= result.target
    before, after = layer_widths(model), layer_widths(result.model)
    # The residual stream keeps its width (every block's output), only inner widths shrink.
    assert all(after[f"layer{s}.{b}.conv2"][1] == before[f"layer{s}.{b}.conv2"][1] for s in (1, 2, 3) for b in (0, 1, 2))
    assert any(after[n][1] < before[n][1] for n in after if n.endswith("conv1") and n != "conv1")
    # The trials follow the threshold rule: each iteration's thresholds replay a ThresholdSearch.
    for it in {t.iteration for t in result.trials}:
        search = ThresholdSearch(0.5, 1.0)
        for t in [t for t in result.trials if t.iteration == it]:
            assert t.threshold == round(search.current, 6)
            search.feedback(t.passed)
    # The saved result reloads; a rerun resumes from state.json without fine-tuning again.
    loaded, _ = load_model(result.path)
    assert val.evaluate(loaded).accuracy == result.accuracy
    tags.clear()
    again = dynamic_prune(model, val, finetune, config, meta, tmp_path)
    assert tags == [] and again.macs == result.macs
    with pytest.raises(ConfigError, match="other settings"):
        dynamic_prune(model, val, finetune, DynamicPruning(drop=0.05), meta, tmp_path)
    with pytest.raises(ConfigError, match="another model"):
        dynamic_prune(result.model, val, finetune, config, meta, tmp_path)
    with pytest.raises(ConfigError, match="above the model's own"):
        dynamic_prune(model, val, finetune, DynamicPruning(target=1.0), meta, tmp_path / "x")


def test_dynamic_trials_can_recalibrate_batchnorm_before_they_are_judged(digits, tmp_path):
    model, batches, val, meta = digits
    images = [x for x, _ in Loader(batches.split.subset(range(96)), 32, mean=meta.mean, std=meta.std)]

    def no_finetune(stage, m, hooks=(), *, tag=None, parameters=None):
        pass

    config = DynamicPruning(drop=0.02, iterations=1, recalibrate=64)
    with pytest.raises(ConfigError, match="training batches"):
        dynamic_prune(model, val, no_finetune, config, meta, tmp_path / "none")
    with pytest.raises(ConfigError, match="training images"):
        DynamicPruning(drop=0.02, recalibrate=-1)
    recal = dynamic_prune(model, val, no_finetune, config, meta, tmp_path / "recal", recalibration=images)
    raw = dynamic_prune(model, val, no_finetune, DynamicPruning(drop=0.02, iterations=1), meta, tmp_path / "raw")
    k = next(i for i, t in enumerate(raw.trials) if t.removed)  # the trials before it removed nothing and passed
    first = recal.trials[k]
    assert first.threshold == raw.trials[k].threshold and first.removed == raw.trials[k].removed
    plain, _ = load_model(tmp_path / "raw" / raw.trials[k].model)
    expected, _ = load_model(tmp_path / "raw" / raw.trials[k].model)
    recalibrate_batchnorm(expected, images, 64)  # the same surgery, then the same 64 images
    if val.evaluate(expected).accuracy < val.evaluate(plain).accuracy:
        expected = plain  # the original statistics scored better: the trial keeps them
    got, _ = load_model(tmp_path / "recal" / first.model)
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), got.state_dict().values(),
                                                 strict=True))
    assert first.before_finetune == val.evaluate(expected).accuracy >= raw.trials[k].before_finetune


def test_distillation_loss_is_the_weighted_sum():
    torch.manual_seed(0)
    teacher = nn.Linear(5, 3)
    student = nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    hook = Distillation(teacher, temperature=4, alpha=0.7)
    logits = student(x)
    total = F.cross_entropy(logits, y) + hook.loss(student, x, logits, y)
    t = teacher(x).detach()
    kl = (F.softmax(t / 4, 1) * (F.log_softmax(t / 4, 1) - F.log_softmax(logits / 4, 1))).sum(1).mean() * 16
    assert torch.allclose(total, 0.3 * F.cross_entropy(logits, y) + 0.7 * kl, atol=1e-6)
    assert torch.allclose(distillation_loss(t, t, 4.0), torch.tensor(0.0), atol=1e-7)
    assert Distillation(teacher, alpha=0).loss(student, x, logits, y) is None
    smooth = Distillation(teacher, temperature=4, alpha=0.7, label_smoothing=0.1)
    total = F.cross_entropy(logits, y, label_smoothing=0.1) + smooth.loss(student, x, logits, y)
    assert torch.allclose(total, 0.3 * F.cross_entropy(logits, y, label_smoothing=0.1) + 0.7 * kl, atol=1e-6)
    with pytest.raises(ConfigError):
        Distillation(teacher, temperature=0)


def test_distillation_pulls_the_student_to_the_teacher(digits):
    model, batches, val, _ = digits
    torch.manual_seed(1)
    student = create_model("small_cnn", num_classes=10, in_channels=1)
    hook = Distillation(model, temperature=4, alpha=1.0)  # soft targets only: no labels used
    fit(student, batches, TrainConfig(epochs=3, lr=0.05), hooks=[hook], progress=False)
    agree = seen = 0
    with torch.no_grad():
        for x, _ in val.batches:
            agree += int((student.eval()(x).argmax(1) == model(x).argmax(1)).sum())
            seen += len(x)
    assert agree / seen > 0.85


def test_removing_a_block_equals_zeroing_its_residual_path():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    zeroed = create_model("resnet20").eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.layer2[1].bn2.weight.zero_()
        zeroed.layer2[1].bn2.bias.zero_()
    remove_blocks(model, ["layer2.1"])
    assert isinstance(model.layer2[1], RemovedBlock)
    assert torch.equal(model(x), zeroed(x))
    assert depth(zeroed) == 20 and depth(model) == 18


def test_material_and_carrier():
    model = create_model("resnet20")
    model.layer2[2].conv1.out_channels = 3  # width is read from the convs
    blocks = residual_blocks(model, (3, 32, 32))
    assert [b.name for b in blocks][:4] == ["layer1.0", "layer1.1", "layer1.2", "layer2.0"]
    assert [b.removable for b in blocks] == [True, True, True, False, True, True, False, True, True]
    material, carrier = choose_blocks(blocks)
    assert (material.name, material.width, carrier.name) == ("layer2.2", 3, "layer2.1")
    # With no block of its shape before it, the carrier is the one after it.
    model.layer1[0].conv1.out_channels = 2
    material, carrier = choose_blocks(residual_blocks(model, (3, 32, 32)))
    assert (material.name, carrier.name) == ("layer1.0", "layer1.1")
    # --max-width limits the blocks to remove, not their carriers: a wide neighbour still carries.
    model.layer1[0].conv1.out_channels = 16
    model.layer2[2].conv1.out_channels = 32
    model.layer1[2].conv1.out_channels = 4
    material, carrier = choose_blocks(residual_blocks(model, (3, 32, 32)), max_width=4)
    assert (material.name, carrier.name) == ("layer1.2", "layer1.1")
    assert choose_blocks(residual_blocks(model, (3, 32, 32)), max_width=2) is None


def test_fused_model_saves_and_reloads_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.5).eval()
    remove_blocks(model, ["layer1.1", "layer3.2"])
    meta = ModelMeta((0.5,) * 3, (0.25,) * 3)
    path = save_model(tmp_path / "fused.pt", model, meta)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(outputs_in_a_fresh_process(path, x, tmp_path), model(x))
    shared, books = share_weights(model, WeightSharing(conv_bits=4, fc_bits=4))
    save_compressed(tmp_path / "fused.cnnz", shared, books, meta)
    back, _ = load_compressed(tmp_path / "fused.cnnz")
    with torch.no_grad():
        assert torch.equal(back(x), shared(x))


def test_layer_fusion_end_to_end_with_snapshots_ablations_and_resume(digits, tmp_path):
    model, batches, val, meta = digits
    calls = []

    def finetune(stage, m, hooks=(), *, tag=None, parameters=None):
        assert tag.startswith(stage) and (parameters is None) == (stage == "long")
        if stage == "short":
            names = {n for n, p in m.named_parameters() if any(p is q for q in parameters)}
            calls.append((tag, sorted({n.rsplit(".", 2)[0] for n in names}), [type(h).__name__ for h in hooks]))
            fit(m, batches, TrainConfig(epochs=1, lr=0.01), parameters=parameters, hooks=hooks, progress=False)
        else:
            calls.append((tag, None, [type(h).__name__ for h in hooks]))
            fit(m, batches, TrainConfig(epochs=2, lr=0.01), hooks=hooks, progress=False)

    config = BlockRemoval(long_every=2, max_drop=0.05, max_removals=4)
    result = remove_thin_blocks(model, val, finetune, config, meta, tmp_path / "kd")
    rows = result.rows
    assert rows[0]["removed"] == 0 and rows[0]["depth"] == 20
    assert [c[0] for c in calls][:3] == ["short-1", "short-2", "long-2"]
    assert calls[0][1] == ["layer1.1"] and calls[0][2] == ["Distillation"]  # the carrier of layer1.0 only
    kept = [r for r in rows if r["file"]]
    assert kept and all(r["accuracy"] >= result.reference_accuracy - 0.05 for r in kept)
    assert kept[-1]["fused_layers"] == 2 * kept[-1]["removed"] and kept[-1]["macs"] < rows[0]["macs"]
    assert val.evaluate(result.model).accuracy == kept[-1]["accuracy"]
    assert count_macs(result.model, SHAPE) == kept[-1]["macs"]
    n = len(calls)
    again = remove_thin_blocks(model, val, finetune, config, meta, tmp_path / "kd")  # resumes: nothing to redo
    assert len(calls) == n and again.rows == rows

    calls.clear()
    remove_thin_blocks(model, val, finetune, BlockRemoval(loss="ce", short=False, long_every=2, max_removals=2), meta,
                       tmp_path / "ce")
    assert calls == [("long-2", None, [])]

    fresh = fresh_copy(result.model)
    assert layer_widths(fresh) == layer_widths(result.model)
    assert not torch.equal(fresh.linear.weight, result.model.linear.weight)
    assert json.loads((tmp_path / "kd" / "state.json").read_text())["stopped"]


def test_block_removal_can_recalibrate_batchnorm_after_each_removal(digits, tmp_path):
    model, batches, val, meta = digits
    images = [x for x, _ in Loader(batches.split.subset(range(96)), 32, mean=meta.mean, std=meta.std)]

    def no_finetune(stage, m, hooks=(), *, tag=None, parameters=None):
        pass

    config = BlockRemoval(short=False, long_every=1, max_drop=0.99, max_removals=1, recalibrate=64)
    with pytest.raises(ConfigError, match="training batches"):
        remove_thin_blocks(model, val, no_finetune, config, meta, tmp_path / "none")
    with pytest.raises(ConfigError, match="training images"):
        BlockRemoval(recalibrate=-1)
    result = remove_thin_blocks(model, val, no_finetune, config, meta, tmp_path / "recal", recalibration=images)
    material, _ = choose_blocks(residual_blocks(model, SHAPE))
    plain = copy.deepcopy(model).eval()
    remove_blocks(plain, [material.name])
    expected = copy.deepcopy(plain)
    recalibrate_batchnorm(expected, images, 64)  # the same removal, then the same 64 images
    got = result.model.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in expected.state_dict().items())
    assert not all(torch.equal(v, got[k]) for k, v in plain.state_dict().items())  # the statistics moved


class Killed(Exception):
    pass


def test_killed_runs_resume_to_the_same_result(digits, tmp_path):
    """A kill in the middle (here: an exception inside the n-th fine-tune) loses only that step."""
    model, batches, val, meta = digits

    def tune(m, params=None, hooks=()):
        fit(m, batches, TrainConfig(epochs=1, lr=0.01), parameters=params, hooks=hooks, progress=False)

    def dying(after):
        calls = []

        def hook(tag):
            calls.append(tag)
            if len(calls) == after:
                raise Killed
        return hook

    config = DynamicPruning(drop=0.02, iterations=1, tolerance=0.1)
    def finetune(stage, m, hooks=(), *, tag=None, parameters=None):
        tune(m, parameters, hooks)

    def dying_finetune(after):
        die = dying(after)

        def run(stage, m, hooks=(), *, tag=None, parameters=None):
            die(tag)
            finetune(stage, m, hooks, tag=tag, parameters=parameters)
        return run

    whole = dynamic_prune(model, val, finetune, config, meta, tmp_path / "d1")
    with pytest.raises(Killed):
        dynamic_prune(model, val, dying_finetune(2), config, meta, tmp_path / "d2")
    resumed = dynamic_prune(model, val, finetune, config, meta, tmp_path / "d2")
    assert resumed.trials == whole.trials and resumed.macs == whole.macs

    fusion = BlockRemoval(long_every=2, max_drop=0.5, max_removals=2)
    pruned = whole.model
    full = remove_thin_blocks(pruned, val, finetune, fusion, meta, tmp_path / "f1")
    with pytest.raises(Killed):  # in the long fine-tune after two removals
        remove_thin_blocks(pruned, val, dying_finetune(3), fusion, meta, tmp_path / "f2")
    again = remove_thin_blocks(pruned, val, finetune, fusion, meta, tmp_path / "f2")
    assert [(r["removed"], r["depth"], r["macs"]) for r in again.rows] == \
        [(r["removed"], r["depth"], r["macs"]) for r in full.rows]
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in full.rows]


def test_recover_trains_each_winner_before_the_next_iteration_and_resumes(digits, tmp_path):
    model, batches, val, meta = digits
    tags = []

    def finetune(stage, m, hooks=(), *, tag=None, parameters=None):
        assert stage in ("trial", "recover") and (stage == "recover") == tag.endswith("-recover")
        tags.append(tag)
        fit(m, batches, TrainConfig(epochs=1, lr=0.01), progress=False)

    config = DynamicPruning(drop=0.02, iterations=2)
    first = dynamic_prune(model, val, finetune, DynamicPruning(drop=0.02, iterations=1), meta, tmp_path,
                          recover=True)
    assert set(first.recovered) == {"0"}
    # More iterations extend the run: the first is resumed, not redone.
    result = dynamic_prune(model, val, finetune, config, meta, tmp_path, recover=True)
    assert not any(t.startswith("it1-") for t in tags[:tags.index("it0-recover")])
    assert [t for t in tags if t.startswith("it0-")] == [t for t in tags[:tags.index("it0-recover") + 1]]
    assert len([t for t in tags if t == "it0-recover"]) == 1
    recovered = [t for t in tags if t.endswith("-recover")]
    assert recovered and recovered == [f"it{it}-recover" for it in sorted(map(int, result.recovered))]
    # Each recovery comes right after its iteration's trials, before the next iteration's first trial.
    assert all(tags.index(f"it{it}-recover") < min((i for i, t in enumerate(tags) if t.startswith(f"it{it + 1}-")),
                                                    default=len(tags)) for it in map(int, result.recovered))
    last = result.recovered[max(result.recovered, key=int)]
    assert last.accuracy == max(last.before, last.after) == result.accuracy
    assert val.evaluate(load_model(result.path)[0]).accuracy == result.accuracy
    # The last recovered file is the result, tensor for tensor.
    kept = load_model(tmp_path / last.model)[0].state_dict()
    assert kept.keys() == result.model.state_dict().keys()
    assert all(torch.equal(kept[k], v) for k, v in result.model.state_dict().items())
    tags.clear()
    assert dynamic_prune(model, val, finetune, config, meta, tmp_path, recover=True).accuracy == result.accuracy
    assert tags == []
    # The extended run is the run that asked for 2 iterations from the start.
    fresh = dynamic_prune(model, val, finetune, config, meta, tmp_path / "fresh", recover=True)
    assert [(t.iteration, t.threshold, t.removed, t.accuracy) for t in fresh.trials] == \
        [(t.iteration, t.threshold, t.removed, t.accuracy) for t in result.trials]
    assert all(torch.equal(fresh.model.state_dict()[k], v) for k, v in result.model.state_dict().items())
    with pytest.raises(ConfigError, match="other settings"):  # a run without recovery is another run
        dynamic_prune(model, val, finetune, config, meta, tmp_path)
    with pytest.raises(ConfigError, match="other settings"):  # only the iterations are free, not the target
        dynamic_prune(model, val, finetune, replace(config, drop=0.03), meta, tmp_path, recover=True)
    with pytest.raises(ConfigError, match="other settings"):  # nor the fine-tunes
        dynamic_prune(model, val, finetune, config, meta, tmp_path, recover=True, training={"epochs": 2})
    with pytest.raises(ConfigError, match="already holds 2 iterations"):  # fewer would overwrite the result
        dynamic_prune(model, val, finetune, replace(config, iterations=1), meta, tmp_path, recover=True)


def test_dynamic_pruning_on_densenet_prunes_output_channels_and_every_reader(tmp_path):
    ds = load_digits()
    train, val = train_val_split(ds.train, val_size=0.2, seed=0)
    torch.manual_seed(0)
    model = create_model("densenet40", num_classes=10, in_channels=1, width=0.5)
    batches = Loader(train, 64, shuffle=True, mean=ds.mean, std=ds.std)
    fit(model, batches, TrainConfig(epochs=2, lr=0.05), progress=False)
    model.eval()
    evaluator = Evaluator(Loader(val, 500, mean=ds.mean, std=ds.std))
    meta = ModelMeta(ds.mean, ds.std, SHAPE, ds.classes)
    config = DynamicPruning(drop=0.5, iterations=1, lower=0.2, tolerance=0.1)
    result = dynamic_prune(model, evaluator, lambda *args, **kwargs: None, config, meta, tmp_path)
    before, after = layer_widths(model), layer_widths(result.model)
    # A dense layer's new channels are read by every later layer of its block (a concatenation): when a conv
    # loses output channels, each reader's BN and conv lose the same inputs.
    convs = [n for n, w in before.items() if len(w) == 3]  # layer_widths of a conv: [in, out, groups]
    best = min((t for t in result.trials if t.passed and t.removed), key=lambda t: t.macs)
    assert sum(before[n][1] - after[n][1] for n in convs) == best.removed > 0
    assert result.macs[1] == best.macs < result.macs[0]
    readers = [n for n in convs if n.startswith("dense") and n.endswith(".conv1")]
    assert any(after[n][0] < before[n][0] for n in readers)
    assert all(before[n][0] - after[n][0] == before[n.replace("conv1", "bn1")][0] - after[n.replace("conv1", "bn1")][0]
               for n in readers)
    assert result.accuracy >= result.target
    loaded, _ = load_model(result.path)
    x = torch.randn(4, *SHAPE)
    assert torch.equal(loaded.eval()(x), result.model.eval()(x))
