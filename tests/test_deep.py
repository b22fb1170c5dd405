"""Deep compression: masks that hold, k-means that is right, and a file that reloads bit-exact."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from cnnzip.deep import (
    MagnitudePruning,
    MaskHook,
    SharedWeightsHook,
    WeightSharing,
    codebooks_of,
    deep_compress,
    iterative_prune,
    kmeans_1d,
    load_compressed,
    magnitude_masks,
    prune_magnitude,
    save_compressed,
    share_weights,
    sparsity,
)
from cnnzip.errors import ConfigError, ModelError
from cnnzip.io import ModelMeta, load_any
from cnnzip.models import create_model, list_models
from cnnzip.train import TrainConfig, fit

META = ModelMeta((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _data(n=4, c=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, c, size, size, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def test_global_and_layer_magnitude_pruning():
    model = create_model("resnet20")
    pruned, masks = prune_magnitude(model, MagnitudePruning(ratio=0.8))
    assert abs(sparsity(pruned) - 0.8) < 1e-3
    assert sparsity(model) == 0.0  # the caller's model is untouched
    layer = magnitude_masks(model, MagnitudePruning(ratio=0.5, scope="layer"))
    for m in layer.values():
        assert abs((~m).float().mean().item() - 0.5) < 0.01
    std = magnitude_masks(model, MagnitudePruning(std_multiplier=0.5))
    w = model.conv1.weight.detach()
    assert torch.equal(std["conv1.weight"], w.abs() >= 0.5 * w.std())
    with pytest.raises(ConfigError):
        MagnitudePruning(ratio=0.5, std_multiplier=1.0)


def test_masks_stay_fixed_through_training():
    model = create_model("resnet20", width=0.25)
    pruned, masks = prune_magnitude(model, MagnitudePruning(ratio=0.7))
    fit(pruned, _data(), TrainConfig(epochs=2, lr=0.1), hooks=[MaskHook(masks)], progress=False)
    params = dict(pruned.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0)
        assert torch.any(params[name][mask] != 0)


def test_kmeans_1d_matches_a_brute_force_lloyd():
    x = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    centroids, labels = kmeans_1d(x, 8)
    # At convergence every value is at its nearest centroid, and every centroid is its cluster's mean.
    nearest = (x[:, None] - centroids[None, :]).abs().argmin(1)
    assert torch.equal(nearest, labels)
    for j in range(len(centroids)):
        assert torch.isclose(centroids[j], x[labels == j].mean(), atol=1e-5)
    # Linear initialisation: the first update averages the clusters of evenly spaced centroids from min to max.
    first, _ = kmeans_1d(x, 8, max_iter=1)
    grid = torch.linspace(float(x.min()), float(x.max()), 8)
    g = (x[:, None] - grid[None, :]).abs().argmin(1)
    expected = torch.stack([x[g == j].mean() for j in range(8) if (g == j).any()])
    assert torch.allclose(first, expected, atol=1e-5)
    few, lab = kmeans_1d(torch.tensor([1.0, 1.0, 2.0]), 16)
    assert len(few) == 2 and lab.tolist() == [0, 0, 1]


def test_weight_sharing_limits_distinct_values_and_keeps_zeros():
    model, _ = prune_magnitude(create_model("resnet20", width=0.5), MagnitudePruning(ratio=0.6))
    shared, books = share_weights(model, WeightSharing(conv_bits=4, fc_bits=3))
    for name, p in shared.named_parameters():
        if name in books:
            nonzero = p.detach()[p.detach() != 0]
            assert len(torch.unique(nonzero)) <= (8 if "linear" in name else 16)
            assert torch.equal(p.detach() == 0, dict(model.named_parameters())[name].detach() == 0)


def test_centroid_finetuning_keeps_weights_tied():
    model = create_model("resnet20", width=0.25)
    shared, books = share_weights(model, WeightSharing(conv_bits=3, fc_bits=3))
    before = {k: b.centroids.clone() for k, b in books.items()}
    fit(shared, _data(), TrainConfig(epochs=2, lr=0.05), hooks=[SharedWeightsHook(books)], progress=False)
    books2 = codebooks_of(shared, books)
    params = dict(shared.named_parameters())
    moved = 0
    for name, book in books2.items():
        assert torch.equal(book.weights(params[name].shape), params[name].detach())  # still tied exactly
        moved += int(not torch.equal(book.centroids, before[name]))
    assert moved > 0


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0, -1.0, 0.0]]))
    model = nn.Sequential(lin)
    _, books = share_weights(model, WeightSharing(fc_bits=1))
    model(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    SharedWeightsHook(books).after_backward(model)
    assert lin.weight.grad.tolist() == [[3.0, 3.0, 3.0, 0.0]]  # 1+2 for centroid 1, 3 for centroid -1, 0 pruned


def _zoo_kwargs(name):
    return {"in_channels": 1} if name == "small_cnn" else {"width": 0.25}


def test_every_zoo_model_round_trips_bit_exact_in_a_fresh_process(tmp_path):
    """Save every registry model compressed; one fresh Python process loads them all; logits are identical."""
    cases = []
    for name in list_models():
        kwargs = _zoo_kwargs(name)
        in_ch = kwargs.get("in_channels", 3)
        meta = ModelMeta((0.5,) * in_ch, (0.25,) * in_ch, (in_ch, 32, 32))
        model = create_model(name, **kwargs).eval()
        shared, books = deep_compress(model, MagnitudePruning(ratio=0.6), WeightSharing(conv_bits=5, fc_bits=4))
        path = tmp_path / f"{name}.cnnz"
        report = save_compressed(path, shared, books, meta)
        assert report.file_bytes == path.stat().st_size
        x = torch.randn(3, in_ch, 32, 32, generator=torch.Generator().manual_seed(0))
        torch.save(x, tmp_path / f"{name}.x.pt")
        with torch.no_grad():
            torch.save(shared(x), tmp_path / f"{name}.expected.pt")
        cases.append(name)
    script = (
        "import sys, torch, cnnzip\n"
        "for name in sys.argv[2:]:\n"
        "    d = sys.argv[1]\n"
        "    m, _ = cnnzip.load(f'{d}/{name}.cnnz')\n"
        "    with torch.no_grad():\n"
        "        torch.save(m(torch.load(f'{d}/{name}.x.pt')), f'{d}/{name}.got.pt')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), *cases], check=True, cwd=tmp_path)
    for name in cases:
        got, expected = torch.load(tmp_path / f"{name}.got.pt"), torch.load(tmp_path / f"{name}.expected.pt")
        assert torch.equal(got, expected), name


def test_iterative_pruning_only_ever_adds_zeros():
    model = create_model("resnet20", width=0.25)
    seen = []

    def finetune(m, hook):
        fit(m, _data(n=2), TrainConfig(epochs=1, lr=0.05), hooks=[hook], progress=False)
        seen.append({k: v.clone() for k, v in hook.masks.items()})

    pruned, masks = iterative_prune(model, [0.5, 0.7, 0.8], finetune)
    assert abs(sparsity(pruned) - 0.8) < 1e-3
    for earlier, later in zip(seen, seen[1:], strict=False):
        assert all(torch.all(later[k] <= earlier[k]) for k in earlier)  # a pruned weight never comes back
    with pytest.raises(ConfigError):
        iterative_prune(model, [0.8, 0.5], finetune)


def test_structured_and_unstructured_together(tmp_path):
    """A channel-pruned model (narrower layers) also compresses and reloads."""
    from cnnzip.prune import ChannelPruning, prune_channels

    model = create_model("vgg11", width=0.25).eval()
    narrow = prune_channels(model, ChannelPruning(method="l1", ratio=0.5), torch.zeros(1, 3, 32, 32)).model
    shared, books = deep_compress(narrow, MagnitudePruning(ratio=0.5), WeightSharing())
    save_compressed(tmp_path / "m.cnnz", shared, books, META)
    loaded, _ = load_compressed(tmp_path / "m.cnnz")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), shared(x))


def test_corrupt_truncated_and_foreign_files_are_clear_errors(tmp_path):
    shared, books = deep_compress(create_model("small_cnn"), MagnitudePruning(ratio=0.5), WeightSharing())
    path = tmp_path / "m.cnnz"
    save_compressed(path, shared, books, META)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "flip.cnnz").write_bytes(bytes(blob))
    (tmp_path / "cut.cnnz").write_bytes(path.read_bytes()[:-100])
    for bad in ("flip.cnnz", "cut.cnnz"):
        with pytest.raises(ModelError, match="corrupt or truncated"):
            load_compressed(tmp_path / bad)
    with pytest.raises(ModelError, match="no such"):
        load_compressed(tmp_path / "missing.cnnz")
    (tmp_path / "other.bin").write_bytes(b"hello world" * 10)
    with pytest.raises(ModelError, match="not a cnnzip compressed model"):
        load_compressed(tmp_path / "other.bin")


def test_weights_that_do_not_match_the_codebook_are_refused(tmp_path):
    shared, books = deep_compress(create_model("small_cnn"), None, WeightSharing())
    with torch.no_grad():
        next(shared.parameters()).add_(0.01)
    with pytest.raises(ModelError, match="codebook"):
        save_compressed(tmp_path / "m.cnnz", shared, books, META)


def test_sizes_are_consistent_and_streams_near_entropy(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20")
    shared, books = deep_compress(model, MagnitudePruning(ratio=0.8), WeightSharing(conv_bits=5, fc_bits=5))
    report = save_compressed(tmp_path / "m.cnnz", shared, books, META)
    t = report.totals()
    assert t["dense_fp32"] > t["pruned_sparse"] > t["shared"] > t["huffman"] >= t["entropy"] * 0.999
    assert t["file"] == (tmp_path / "m.cnnz").stat().st_size
    assert t["ratio"] > 8  # 80% sparse, 5-bit indices, entropy-coded
    for layer in report.layers:
        for s in layer.streams.values():
            assert s["coded"] >= s["entropy"] - 1e-6
    coded = sum(s["coded"] for layer in report.layers for s in layer.streams.values())
    entropy = sum(s["entropy"] for layer in report.layers for s in layer.streams.values())
    assert coded <= 1.01 * entropy + 64 * len(report.layers)  # within 1% (+ a byte of padding per stream)


def test_cli_deep_compress_eval_info(tmp_path, capsys, digits_model):
    from cnnzip.cli import main

    model = digits_model(4)
    out = tmp_path / "dc"
    assert main(["deep-compress", str(model), "--sparsity", "0.7", "--finetune-epochs", "1", "--lr", "0.02",
                 "--conv-bits", "5", "--fc-bits", "4", "--out", str(out), "--no-progress", "--per-layer"]) == 0
    text = capsys.readouterr().out
    assert "Huffman" in text and "entropy bound" in text and "smaller" in text
    assert main(["eval", str(out / "model.cnnz")]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["info", str(out / "model.cnnz"), "--batch-sizes", "1", "--repeats", "2"]) == 0
    assert "nonzero" in capsys.readouterr().out
    m, meta = load_any(out / "model.cnnz")
    assert meta.input_shape == (1, 8, 8) and np.isclose(sparsity(m), 0.7, atol=0.01)
