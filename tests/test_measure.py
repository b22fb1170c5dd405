import io

import pytest
import torch
from torch import nn

from cnnzip.errors import ConfigError
from cnnzip.measure import (
    Evaluator,
    count_macs,
    count_nonzero,
    count_parameters,
    dense_bytes,
    measure_latency,
    required_correct,
    saved_bytes,
)


def test_required_correct_matches_float_comparison():
    for total in [1, 3, 7, 10, 99, 1000, 4999, 5000, 10000]:
        for target in [0.0, 0.1, 0.3, 1 / 3, 0.5, 0.8, 0.8123, 0.9, 0.91, 0.99, 0.9999, 1.0, 1.01]:
            need = required_correct(target, total)
            expected = next((c for c in range(total + 1) if c / total >= target), total + 1)
            assert need == expected, (target, total)


def test_counts_of_a_known_model():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5))
    assert count_parameters(model) == 3 * 8 * 9 + 8 * 16 * 5 + 5
    # conv: 8 out channels x 16 positions x 27 MACs each; linear: 128 x 5
    assert count_macs(model, (3, 4, 4)) == 8 * 16 * 27 + 128 * 5
    with torch.no_grad():
        model[0].weight[:4].zero_()
    assert count_nonzero(model) == count_parameters(model) - 4 * 27
    assert dense_bytes(model) == 4 * count_parameters(model)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert saved_bytes(model) == len(buf.getvalue())


def test_shared_parameters_counted_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_parameters(model) == 20


def test_latency_is_measured_in_eval_mode_and_restores_training():
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5))
    model.train()
    lat = measure_latency(model, (16,), batch_size=4, warmup=1, repeats=5)
    assert lat.repeats >= 5 and lat.median_ms > 0 and lat.images_per_second > 0
    assert model.training
    with pytest.raises(ConfigError):
        measure_latency(model, (16,), repeats=0)


def _noisy_classifier_batches(n=1000, batch=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.nn.functional.one_hot(y, 4).float() * 2.0 + torch.randn(n, 4, generator=g) * 1.2
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def test_early_exit_verdict_equals_full_evaluation():
    model = nn.Identity()  # argmax of the noisy one-hot: some accuracy between chance and 1
    ev = Evaluator(_noisy_classifier_batches())
    full = ev.evaluate(model)
    assert full.complete and full.evaluated == 1000 and 0.5 < full.accuracy < 0.95
    exact = full.accuracy
    thresholds = [0.0, 0.2, 0.5, exact - 0.05, exact - 0.001, exact, exact + 0.001, exact + 0.05, 0.99, 1.0]
    thresholds += [i / 100 for i in range(0, 101, 5)]
    images_before = ev.images
    saved = 0
    for t in thresholds:
        r = ev.check(model, t)
        assert r.passed == (exact >= t), t
        assert r.evaluated <= 1000
        saved += 1000 - r.evaluated
    assert ev.checks == 1 + len(thresholds)
    assert ev.images == images_before + sum(1000 for _ in thresholds) - saved
    assert saved > 0.4 * 1000 * len(thresholds)  # far from the boundary the verdict comes early
    assert ev.check(model, 0.0).evaluated == 0  # nothing can fail a zero target
    assert ev.check(model, 1.0).evaluated <= 64  # the first error fails a perfect target


def test_evaluator_restores_mode_and_rejects_empty():
    model = nn.Sequential(nn.Linear(4, 4))
    model.train()
    Evaluator(_noisy_classifier_batches(n=10)).evaluate(model)
    assert model.training
    with pytest.raises(ConfigError):
        Evaluator([])
