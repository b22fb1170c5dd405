"""Feature (FitNets) and relation (RKD, similarity-preserving) distillation hooks."""

import copy

import pytest
import torch
from torch import nn

from cnnzip.distill import FeatureDistillation, RelationDistillation, rkd_loss, sp_loss
from cnnzip.errors import ConfigError
from cnnzip.models import create_model
from cnnzip.train import TrainConfig, capture_features, fit

SHAPE = (3, 32, 32)


def data(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, *SHAPE, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def test_relation_losses_vanish_on_the_teachers_relations_whatever_the_scale_or_width():
    torch.manual_seed(0)
    t = torch.randn(8, 16, 4, 4)
    assert rkd_loss(t, t).item() == 0 and sp_loss(t, t).item() == 0
    assert rkd_loss(3 * t, t).item() < 1e-6 and sp_loss(3 * t, t).item() < 1e-10  # relations ignore scale
    wider = torch.cat([t, t], 1)  # the same relations in twice the channels (a different width)
    assert rkd_loss(t, wider).item() < 1e-5 and sp_loss(t, wider).item() < 1e-10
    other = torch.randn(8, 16, 4, 4)
    assert rkd_loss(other, t).item() > 0.1 and sp_loss(other, t).item() > 1e-4


def test_sp_loss_is_the_papers_formula():
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [1.0, 0.0]])

    def g(x):
        m = x @ x.T
        return m / m.norm(dim=1, keepdim=True)

    assert torch.isclose(sp_loss(s, t), ((g(s) - g(t)) ** 2).sum() / 4)


def test_feature_distillation_trains_its_adapter_and_pulls_the_student_to_the_teacher():
    torch.manual_seed(0)
    teacher = create_model("resnet20", width=0.5).eval()
    student = create_model("resnet20", width=0.25)
    example = torch.zeros(1, *SHAPE)
    hook = FeatureDistillation(teacher, student, {"layer2": "layer2"}, example)
    assert [tuple(p.shape) for p in hook.parameters()] == [(16, 8, 1, 1)]  # 8 student channels -> 16 teacher's

    def distance():
        batch = data(1, seed=5)[0][0]
        with torch.no_grad(), capture_features(student.eval(), ["layer2"]) as s, \
                capture_features(teacher, ["layer2"]) as t:
            student(batch), teacher(batch)
            return nn.functional.mse_loss(hook.adapters["0"](s["layer2"]), t["layer2"]).item()

    adapter = hook.adapters["0"].weight.detach().clone()
    before = distance()
    fit(student, data(), TrainConfig(epochs=3, lr=0.05), hooks=[hook], progress=False)
    assert not torch.equal(adapter, hook.adapters["0"].weight)  # fit trained the adapter
    assert distance() < 0.7 * before


def test_relation_distillation_trains_through_fit():
    torch.manual_seed(0)
    teacher = create_model("resnet20", width=0.5).eval()
    student = create_model("resnet20", width=0.25)
    x = torch.randn(32, *SHAPE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        batches = [(x, teacher(x).argmax(1))]  # labels the teacher agrees with: the two losses pull one way
    for kind in ("rkd", "sp"):
        hook = RelationDistillation(teacher, student, ["layer3"], torch.zeros(1, *SHAPE), kind=kind)
        trained = copy.deepcopy(student)

        def relation(m, hook=hook):
            m.eval()
            with torch.no_grad():
                return hook.loss(m, x, m(x), batches[0][1], features=_features(m, "layer3", x)).item()

        start = relation(trained)
        fit(trained, batches, TrainConfig(epochs=20, lr=0.05), hooks=[hook], progress=False)
        assert relation(trained) < 0.8 * start, kind


def _features(model, name, x):
    with capture_features(model, [name]) as out:
        model(x)
    return dict(out)


def test_bad_input_gets_one_clear_error():
    teacher = create_model("resnet20", width=0.25).eval()
    student = create_model("resnet20", width=0.25)
    example = torch.zeros(1, *SHAPE)
    with pytest.raises(ConfigError, match="'layer9'"):
        FeatureDistillation(teacher, student, ["layer9"], example)
    with pytest.raises(ConfigError, match="same classes"):
        FeatureDistillation(create_model("resnet20", width=0.25, num_classes=100), student, ["layer1"], example)
    with pytest.raises(ConfigError, match="same classes"):
        RelationDistillation(create_model("resnet20", width=0.25, num_classes=100), student, ["layer1"], example)
    with pytest.raises(ConfigError, match="one of rkd, sp"):
        RelationDistillation(teacher, student, ["layer1"], example, kind="cosine")
    with pytest.raises(ConfigError, match="at least one layer"):
        RelationDistillation(teacher, student, [], example)
    with pytest.raises(ConfigError, match="same kind"):
        FeatureDistillation(teacher, student, {"layer1": "linear"}, example)


def test_distilling_builds_the_hooks_for_each_fine_tunes_own_model():
    from cnnzip.distill import DistillSpec, distilling
    from cnnzip.distill.feature import FeatureDistillation as Feature

    teacher = create_model("resnet20", width=0.5).eval()
    calls = []

    def finetune(stage, model, hooks=(), *, tag=None, parameters=None):
        calls.append((stage, [type(h).__name__ for h in hooks],
                      [tuple(p.shape) for h in hooks if isinstance(h, Feature) for p in h.parameters()]))

    wrapped = distilling(finetune, DistillSpec("feature", layers=("layer3",)), teacher, torch.zeros(1, *SHAPE))
    wrapped("a", create_model("resnet20", width=0.25), ["mask"], tag="x")
    wrapped("b", create_model("resnet20", width=0.5))
    # each call's adapter maps that call's model's channels (16, then 32) to the teacher's 32
    assert calls == [("a", ["str", "FeatureDistillation"], [(32, 16, 1, 1)]),
                     ("b", ["FeatureDistillation"], [(32, 32, 1, 1)])]
    with pytest.raises(ConfigError, match="needs the layers"):
        DistillSpec("relation")
    with pytest.raises(ConfigError, match="one of response"):
        DistillSpec("attention")
    with pytest.raises(ConfigError, match="'layer7'"):
        distilling(finetune, DistillSpec("relation", layers=("layer7",)), teacher, torch.zeros(1, *SHAPE))
