"""Deep compression of the JPEG-fine-tuned ResNet-56 into a real file, against what peers ship.

    python benchmarks/deep_resnet56.py [--sparsity 0.8] [--epochs 1] [--conv-bits 8] [--fc-bits 5] [--threads 1]

Prunes the smallest weights (one global threshold), fine-tunes with the masks fixed, shares weights by k-means
(2^bits clusters per layer), Huffman-codes indices and positions, writes the file, and reads it back. In the same
run, the same sparsity with torch.nn.utils.prune (global L1) saved with torch.save, and gzip / lzma of the fp32
file. Sizes are file lengths on disk. Accuracy is on the 10,000 JPEG test images.
"""

import argparse
import copy
import gzip
import io
import lzma
import statistics
import time

import torch
import torch.nn.utils.prune as tprune

from _common import CIFAR_JPEG, RUNS, save
from baseline_resnet56 import MODEL, ensure
from cnnzip.data import Loader, load_image_folder, train_val_split
from cnnzip.deep import (
    MagnitudePruning,
    MaskHook,
    WeightSharing,
    load_compressed,
    prune_magnitude,
    save_compressed,
    share_weights,
    sparsity,
)
from cnnzip.io import load_model
from cnnzip.measure import Evaluator
from cnnzip.train import TrainConfig, fit


def torch_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--conv-bits", type=int, default=8)
    ap.add_argument("--fc-bits", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ensure()
    base, meta = load_model(MODEL)
    ds = load_image_folder(CIFAR_JPEG)
    train, _ = train_val_split(ds.train, val_size=5000, seed=0)
    test = Evaluator(Loader(ds.test, 500, mean=meta.mean, std=meta.std))
    batches = Loader(train, 128, shuffle=True, augment=True, mean=meta.mean, std=meta.std, seed=0)
    run = RUNS / "bench-deep-resnet56"
    acc = {"baseline": test.evaluate(base).accuracy}

    # cnnzip: prune, fine-tune with fixed masks, share, code, write, read back.
    pruned, masks = prune_magnitude(base, MagnitudePruning(ratio=args.sparsity))
    acc["pruned"] = test.evaluate(pruned).accuracy
    key = f"s{args.sparsity}-e{args.epochs}-lr{args.lr}"
    fit(pruned, batches, TrainConfig(epochs=args.epochs, lr=args.lr, seed=0), hooks=[MaskHook(masks)],
        checkpoint=run / f"finetune-{key}.pt", progress=False)
    acc["pruned+finetuned"] = test.evaluate(pruned).accuracy
    shared, books = share_weights(pruned, WeightSharing(conv_bits=args.conv_bits, fc_bits=args.fc_bits))
    acc["compressed"] = test.evaluate(shared).accuracy
    path = run / "resnet56.cnnz"
    encode_times, decode_times = [], []
    for _ in range(3):
        t = time.perf_counter()
        report = save_compressed(path, shared, books, meta)
        encode_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        loaded, _ = load_compressed(path)
        decode_times.append(time.perf_counter() - t)
    acc["file reloaded"] = test.evaluate(loaded).accuracy
    x = torch.randn(8, 3, 32, 32)
    bit_exact = torch.equal(loaded(x), shared.eval()(x))
    totals = report.totals()
    streams = [s for layer in report.layers for s in layer.streams.values()]
    coded, entropy = sum(s["coded"] for s in streams), sum(s["entropy"] for s in streams)

    # Peers, same sparsity, same baseline.
    dense_bytes = torch_bytes(base.state_dict())
    peer = copy.deepcopy(base)
    params = [(m, "weight") for m in peer.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=args.sparsity)
    peer_masked_bytes = torch_bytes(peer.state_dict())
    for m, name in params:
        tprune.remove(m, name)
    peer_removed_bytes = torch_bytes(peer.state_dict())
    fp32 = io.BytesIO()
    torch.save(base.state_dict(), fp32)
    pruned_fp32 = io.BytesIO()
    torch.save(pruned.state_dict(), pruned_fp32)
    sizes = {
        "fp32 state dict (torch.save)": dense_bytes,
        "gzip -9 of fp32 file": len(gzip.compress(fp32.getvalue(), 9)),
        "lzma of fp32 file": len(lzma.compress(fp32.getvalue())),
        "torch.nn.utils.prune, saved with masks": peer_masked_bytes,
        "torch.nn.utils.prune after prune.remove": peer_removed_bytes,
        "cnnzip pruned fp32, torch.save": pruned_fp32.getbuffer().nbytes,
        "cnnzip pruned fp32, lzma": len(lzma.compress(pruned_fp32.getvalue())),
        "cnnzip .cnnz file": path.stat().st_size,
    }
    print(f"{'what':<44}{'bytes':>12}{'vs fp32':>10}")
    for k, v in sizes.items():
        print(f"{k:<44}{v:>12,}{dense_bytes / v:>9.1f}x")
    print("accuracy:", {k: f"{v:.2%}" for k, v in acc.items()}, "bit-exact reload:", bit_exact)
    print(f"weights: fp32 {totals['dense_fp32']:,.0f} -> pruned {totals['pruned_sparse']:,.0f} -> shared "
          f"{totals['shared']:,.0f} -> Huffman {totals['huffman']:,.0f}; streams {coded:,.0f} B coded vs entropy "
          f"{entropy:,.0f} B ({coded / entropy - 1:+.2%})")
    print(f"encode {statistics.median(encode_times):.2f} s, decode+rebuild {statistics.median(decode_times):.2f} s")
    save("deep_resnet56", {
        "args": vars(args), "accuracy": acc, "bit_exact_reload": bit_exact, "sizes": sizes,
        "size_breakdown": totals, "streams_coded_bytes": coded, "streams_entropy_bytes": entropy,
        "layouts": {layer.name: layer.layout for layer in report.layers},
        "encode_seconds": statistics.median(encode_times), "decode_seconds": statistics.median(decode_times),
        "sparsity": sparsity(shared), "layers": report.as_dict()["layers"],
        "data": "shared cifar10-jpeg: 45,000 train (5,000 held out), 10,000 test"})


if __name__ == "__main__":
    main()
