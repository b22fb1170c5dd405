import pytest
import torch
from torch import nn

from cnnzip.errors import ConfigError
from cnnzip.measure import Evaluator
from cnnzip.train import TrainConfig, TrainHook, cosine_lr, fit, recalibrate_batchnorm


class Batches:
    """A tiny seeded loader: order depends only on (seed, epoch), like cnnzip.data.Loader."""

    def __init__(self, n=256, batch=32, seed=0):
        g = torch.Generator().manual_seed(123)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.x = torch.nn.functional.one_hot(self.y, 3).float() + 0.4 * torch.randn(n, 3, generator=g)
        self.batch, self.seed, self.epoch = batch, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.y) // self.batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.y), generator=g)
        for i in range(len(self)):
            idx = order[i * self.batch:(i + 1) * self.batch]
            yield self.x[idx], self.y[idx]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def test_config_validates():
    with pytest.raises(ConfigError):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError):
        TrainConfig(epochs=2, warmup_epochs=3)


def test_cosine_schedule_with_warmup():
    cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=1)
    assert cosine_lr(cfg, 0, 10) == pytest.approx(0.01)
    assert cosine_lr(cfg, 9, 10) == pytest.approx(0.1)
    assert cosine_lr(cfg, 10, 10) == pytest.approx(0.1)
    assert cosine_lr(cfg, 55, 10) == pytest.approx(0.05)
    assert cosine_lr(cfg, 100, 10) == pytest.approx(0.0)


def test_fit_learns():
    model, data = _model(), Batches()
    ev = Evaluator(list(Batches()))
    before = ev.evaluate(model).accuracy
    result = fit(model, data, TrainConfig(epochs=5, lr=0.1), evaluator=ev, progress=False)
    assert len(result.history) == 5
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.last["val_acc"] > max(before, 0.9)


class Crash(TrainHook):
    def __init__(self, epoch, step):
        self.epoch, self.step, self.seen = epoch, step, 0

    def after_step(self, model):
        self.seen += 1
        if self.seen == self.epoch * len(Batches()) + self.step:
            raise KeyboardInterrupt


def test_killed_run_resumes_to_identical_weights(tmp_path):
    cfg = TrainConfig(epochs=4, lr=0.05, warmup_epochs=1, seed=3)
    reference = _model()
    fit(reference, Batches(seed=3), cfg, progress=False)

    ckpt = tmp_path / "ckpt.pt"
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, Batches(seed=3), cfg, checkpoint=ckpt, hooks=[Crash(epoch=2, step=3)], progress=False)
    resumed = _model()  # a fresh process would start from a fresh model, with the same (now harmless) hook
    result = fit(resumed, Batches(seed=3), cfg, checkpoint=ckpt, hooks=[Crash(epoch=99, step=0)], progress=False)
    assert result.resumed_from_epoch == 2
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_with_other_settings_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    fit(_model(), Batches(), TrainConfig(epochs=1, lr=0.05), checkpoint=ckpt, progress=False)
    with pytest.raises(ConfigError, match="lr"):
        fit(_model(), Batches(), TrainConfig(epochs=1, lr=0.1), checkpoint=ckpt, progress=False)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="Delete it"):
        fit(_model(), Batches(), TrainConfig(epochs=1, lr=0.05), checkpoint=ckpt, progress=False)


def test_resume_with_other_hooks_or_fingerprint_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    cfg = TrainConfig(epochs=1, lr=0.05)
    fit(_model(), Batches(), cfg, checkpoint=ckpt, progress=False, fingerprint={"data": "a"})
    with pytest.raises(ConfigError, match="data"):
        fit(_model(), Batches(), cfg, checkpoint=ckpt, progress=False, fingerprint={"data": "b"})
    with pytest.raises(ConfigError, match="hooks"):
        fit(_model(), Batches(), cfg, checkpoint=ckpt, progress=False, fingerprint={"data": "a"},
            hooks=[TrainHook()])


def test_an_early_stop_is_remembered_on_resume(tmp_path):
    class StopNow(TrainHook):
        def epoch_end(self, model, epoch, metrics):
            return True

    ckpt = tmp_path / "ckpt.pt"
    fit(_model(), Batches(), TrainConfig(epochs=3, lr=0.05), hooks=[StopNow()], checkpoint=ckpt, progress=False)
    result = fit(_model(), Batches(), TrainConfig(epochs=3, lr=0.05), hooks=[StopNow()], checkpoint=ckpt,
                 progress=False)
    assert len(result.history) == 1


def test_hooks_edit_loss_gradients_and_stop():
    class Freeze(TrainHook):
        def after_backward(self, model):
            model[0].weight.grad[0].zero_()

    class Penalty(TrainHook):
        calls = 0

        def loss(self, model, inputs, logits, targets):
            Penalty.calls += 1
            return 1e-3 * model[0].weight.abs().sum()

    class StopAfterTwo(TrainHook):
        def epoch_end(self, model, epoch, metrics):
            return epoch == 1

    model = _model()
    row0 = model[0].weight[0].detach().clone()
    result = fit(model, Batches(), TrainConfig(epochs=5, lr=0.1, weight_decay=0.0),
                 hooks=[Freeze(), Penalty(), StopAfterTwo()], progress=False)
    assert torch.equal(model[0].weight[0], row0)
    assert not torch.equal(model[0].weight[1], _model()[0].weight[1])
    assert Penalty.calls == 2 * len(Batches())
    assert len(result.history) == 2


def test_fit_trains_only_the_given_parameters():
    model = _model()
    last = model[3].weight.detach().clone()
    fit(model, Batches(), TrainConfig(epochs=1, lr=0.1), parameters=model[0].parameters(), progress=False)
    assert torch.equal(model[3].weight, last)


class FeatureMatch(TrainHook):
    """Pulls the hidden layer's mean activation towards a learned target: reads features, owns a parameter."""

    features = ("1",)

    def __init__(self):
        self.target = nn.Parameter(torch.tensor(3.0))
        self.seen = []

    def parameters(self):
        return [self.target]

    def loss(self, model, inputs, logits, targets, features):
        self.seen.append((inputs.detach(), features["1"].detach()))
        return (features["1"].mean() - self.target) ** 2 + 0.1 * self.target ** 2


def test_hooks_read_features_by_layer_name_and_train_their_own_parameters():
    model, hook = _model(), FeatureMatch()
    fit(model, Batches(), TrainConfig(epochs=2, lr=0.05, weight_decay=0), hooks=[hook], progress=False)
    x, hidden = hook.seen[0]
    # The features are the named layer's output (here the ReLU after the first linear) for that very batch.
    first = _model()
    assert torch.allclose(hidden, first[1](first[0](x)))
    assert float(hook.target.detach()) < 3.0  # the hook's own parameter was trained by the same optimizer
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        bad = FeatureMatch()
        bad.features = ("nope",)
        fit(_model(), Batches(), TrainConfig(epochs=1), hooks=[bad], progress=False)


def test_a_hook_parameter_survives_a_resume(tmp_path):
    whole_model, whole_hook = _model(), FeatureMatch()
    fit(whole_model, Batches(), TrainConfig(epochs=3, lr=0.05), hooks=[whole_hook], progress=False)

    class Killed(Exception):
        pass

    class Kill(TrainHook):
        def __init__(self, at=None):
            self.at = at

        def epoch_end(self, model, epoch, metrics):
            if epoch == self.at:
                raise Killed

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        fit(_model(), Batches(), TrainConfig(epochs=3, lr=0.05), hooks=[FeatureMatch(), Kill(at=1)], checkpoint=ckpt,
            progress=False)
    # The checkpoint after the first epoch holds the hook's parameter; a fresh hook resumes from it, not from 3.0.
    model, hook = _model(), FeatureMatch()
    fit(model, Batches(), TrainConfig(epochs=3, lr=0.05), hooks=[hook, Kill()], checkpoint=ckpt,
        progress=False)
    assert torch.equal(hook.target, whole_hook.target)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), whole_model.state_dict().values(),
                                                 strict=True))


def test_finetuner_trains_the_stages_asked_for_and_resumes_each_call(tmp_path):
    from cnnzip.finetune import Finetuner

    class Count(TrainHook):
        def __init__(self):
            self.steps = 0

        def after_step(self, model):
            self.steps += 1

    always, extra = Count(), Count()
    tuner = Finetuner({"short": Batches(n=64), "long": Batches()}, {"short": 1, "long": 2, "off": 0},
                      TrainConfig(lr=0.05), hooks=[always], run_dir=tmp_path, fingerprint={"data": "toy"})
    model = _model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    tuner("off", model, [extra])
    tuner("unknown", model)
    assert always.steps == 0 and all(torch.equal(start[k], v) for k, v in model.state_dict().items())
    tuner("short", model, [extra], tag="short-1")
    assert always.steps == extra.steps == 64 // 32  # one epoch of the short stage's own batches, both hooks
    tuner("long", model, tag="long-1")
    assert always.steps == 2 + 2 * (256 // 32)
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.pt")) == ["long", "short"]
    # The same call from the same starting weights resumes its finished checkpoint instead of training again.
    again = _model()
    tuner("short", again, [extra], tag="short-1")
    assert always.steps == 2 + 2 * (256 // 32)
    with pytest.raises(ConfigError, match="0 \\(none\\) or more"):
        Finetuner(Batches(), {"short": -1})


def test_a_checkpoint_that_would_run_code_is_refused_and_never_run(tmp_path):
    import os

    class RunsCode:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "ran"),))

    torch.save({"format": "cnnzip.train-checkpoint", "payload": RunsCode()}, tmp_path / "ckpt.pt")
    with pytest.raises(ConfigError, match="files that would run code are refused"):
        fit(_model(), Batches(), TrainConfig(epochs=1), checkpoint=tmp_path / "ckpt.pt", progress=False)
    assert not (tmp_path / "ran").exists()


def test_batchnorm_recalibration_measures_the_images_and_changes_nothing_else():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.Dropout(0.5),
                          nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    model.eval()
    bn = model[1]
    bn.running_mean.fill_(5.0)  # stale statistics, as after a surgery
    bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    x = torch.randn(10, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    batches = [(x[:5], None), (x[5:], None)]
    assert recalibrate_batchnorm(model, batches, images=10) == 10
    with torch.no_grad():
        h = model[0](x)  # the two batches are weighted alike: the average of their statistics
        means = torch.stack([h[:5].mean((0, 2, 3)), h[5:].mean((0, 2, 3))])
        variances = torch.stack([h[:5].var((0, 2, 3)), h[5:].var((0, 2, 3))])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, variances.mean(0), atol=1e-5)
    assert bn.momentum == 0.3 and not model.training and not model[3].training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert recalibrate_batchnorm(model, batches, images=7) == 7  # a budget that ends inside a batch
    assert recalibrate_batchnorm(nn.Sequential(nn.Linear(2, 2)), batches) == 0  # nothing to recalibrate
    with pytest.raises(ConfigError, match="at least 2 images"):
        recalibrate_batchnorm(model, [(x[:1], None)])


class ImageBatches(Batches):
    """The same labels as 3-channel 6x6 images: a model with convolutions trains on them."""

    def __init__(self, seed=0):
        super().__init__(seed=seed)
        g = torch.Generator().manual_seed(7)
        self.x = self.x[:, :, None, None] * torch.ones(1, 1, 6, 6) + 0.3 * torch.randn(len(self.y), 3, 6, 6,
                                                                                       generator=g)


def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


class Flattening(nn.Module):
    """Flattens with `.view`, as many hand-written models do: it cannot take channels_last activations."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 36, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(len(y), -1))


def _layouts_seen(model):
    """Records, at every forward call of the model's first conv, whether its input was channels_last."""
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_pre_hook(lambda m, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
    return seen


def test_image_batches_go_in_channels_last_on_the_cpu_and_change_no_weight_beyond_rounding(monkeypatch):
    model = _conv_model()
    seen = _layouts_seen(model)
    cfg = TrainConfig(epochs=2, lr=0.05, seed=1)
    evaluator = Evaluator(list(ImageBatches()))
    fit(model, ImageBatches(), cfg, evaluator=evaluator, progress=False)
    assert len(seen) == 1 + 2 * (len(ImageBatches()) + 1 + len(ImageBatches())) and all(seen)  # (+1: each probe)
    assert all(p.is_contiguous() for p in model.parameters())  # weights keep the default layout

    import cnnzip.measure
    import cnnzip.train

    class Default:
        def __init__(self, model):
            pass

        def __call__(self, x):
            return x

    monkeypatch.setattr(cnnzip.train, "InputLayout", Default)
    monkeypatch.setattr(cnnzip.measure, "InputLayout", Default)
    reference = _conv_model()
    seen = _layouts_seen(reference)
    fit(reference, ImageBatches(), cfg, progress=False)
    assert seen and not any(seen)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), name  # only the order of float sums differs
    assert evaluator.evaluate(reference).accuracy == Evaluator(list(ImageBatches())).evaluate(reference).accuracy


def test_a_model_that_views_its_activations_keeps_the_default_layout_and_so_do_observed_ones():
    model = Flattening()
    seen = _layouts_seen(model)
    fit(model, ImageBatches(), TrainConfig(epochs=1, lr=0.05), progress=False)
    assert Evaluator(list(ImageBatches())).evaluate(model).accuracy > 0.5
    assert len(seen) == 2 + 2 * len(ImageBatches()) and seen.count(True) == 2  # only the two probes tried it

    from torch.ao.quantization import FakeQuantize

    qat = nn.Sequential(FakeQuantize(), _conv_model())  # as QAT prepares a model: observers record every batch
    seen = _layouts_seen(qat)
    fit(qat, ImageBatches(), TrainConfig(epochs=1, lr=0.05), progress=False)
    assert seen and not any(seen)  # no probe: observers would count its images


def _resumes_identically(make_model, tmp_path):
    """Training killed mid-epoch and resumed from its checkpoint ends with an uninterrupted run's weights."""
    cfg = TrainConfig(epochs=3, lr=0.05, seed=3)
    reference = make_model()
    fit(reference, ImageBatches(seed=3), cfg, progress=False)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), ImageBatches(seed=3), cfg, checkpoint=ckpt, hooks=[Crash(epoch=1, step=2)], progress=False)
    resumed = make_model()
    fit(resumed, ImageBatches(seed=3), cfg, checkpoint=ckpt, hooks=[Crash(epoch=99, step=0)], progress=False)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_killed_conv_run_resumes_to_identical_weights(tmp_path):
    _resumes_identically(_conv_model, tmp_path)  # (in channels_last batches)


def test_a_teacher_that_views_its_activations_still_teaches_a_channels_last_student():
    from cnnzip.distill import Distillation

    teacher = Flattening()
    fit(teacher, ImageBatches(), TrainConfig(epochs=2, lr=0.05), progress=False)
    student = _conv_model()
    seen = _layouts_seen(student)
    fit(student, ImageBatches(), TrainConfig(epochs=1, lr=0.05), hooks=[Distillation(teacher)], progress=False)
    assert all(seen)  # the student took channels_last batches; the teacher got them in its own layout


class Noisy(nn.Module):
    """Draws random numbers in every forward pass, even in eval mode (`F.dropout` defaults to training=True)."""

    def __init__(self):
        super().__init__()
        self.net = _conv_model()

    def forward(self, x):
        return torch.nn.functional.dropout(self.net(x), 0.2)


def test_the_layout_probe_draws_no_random_number_so_a_resumed_run_is_identical(tmp_path):
    _resumes_identically(Noisy, tmp_path)


def test_channels_last_can_be_turned_off_and_any_error_of_the_probe_means_the_default_layout(monkeypatch):
    class Asserting(nn.Module):  # as code in front of an extension kernel does
        def __init__(self):
            super().__init__()
            self.net = _conv_model()

        def forward(self, x):
            assert x.is_contiguous()
            return self.net(x)

    seen = _layouts_seen(model := Asserting())
    fit(model, ImageBatches(), TrainConfig(epochs=1, lr=0.05), progress=False)
    assert len(seen) == len(ImageBatches()) and not any(seen)  # (the probe stopped at the assertion)
    monkeypatch.setenv("CNNZIP_CHANNELS_LAST", "0")
    seen = _layouts_seen(model := _conv_model())
    fit(model, ImageBatches(), TrainConfig(epochs=1, lr=0.05), progress=False)
    assert seen and not any(seen)

