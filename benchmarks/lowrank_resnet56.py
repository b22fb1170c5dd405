"""Low-rank decomposition of ResNet-56 beside structured pruning at the same MACs (issue 18).

    python benchmarks/lowrank_resnet56.py --macs-reduction 0.45 --epochs 3 --threads 2

Starts from the JPEG-fine-tuned ResNet-56 (`baseline_resnet56.py`). Variants, each fine-tuned --epochs on the
JPEG training images (lr 0.01, cosine, batch 128, flips and crops; a fixed subset with --train-images):

- decomposed, budget: `cnnzip.lowrank.decompose` with one energy for all layers found to remove --macs-reduction of
  the MACs (Tucker-2 for 3x3 convs, SVD for the classifier);
- decomposed, energy: every layer at --energy (reported as it lands, for the energy mode);
- L1, same MACs: cnnzip's L1 channel pruning of the blocks' inner widths at the same MACs reduction
  (`prune_to_macs`), BatchNorm recalibrated on 512 augmented training images.

Each is measured before and after its fine-tune on the decision half of the JPEG test split ("val"; stratified,
seed 0), and once on the other half ("test"); then ONNX Runtime and eager latency at batch 1 and 256, all models
side by side in interleaved rounds. Fine-tunes checkpoint every epoch under $CNNZIP_RUNS/bench-lowrank/, finished
variants are kept there, so a killed run resumes. Writes results/lowrank_resnet56.json.
"""

import argparse
import json
import time

import torch

from _common import RUNS, save
from baseline_resnet56 import quantization_setup
from cnnzip.data import Loader
from cnnzip.finetune import Finetuner
from cnnzip.io import atomic_write_text, load_model, save_model
from cnnzip.lowrank import Decomposition, decompose
from cnnzip.measure import count_macs, count_parameters
from cnnzip.prune import ChannelPruning, prune_to_macs
from cnnzip.report import latency_table
from cnnzip.train import TrainConfig, recalibrate_batchnorm

SHAPE = (3, 32, 32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--macs-reduction", type=float, default=0.45)
    ap.add_argument("--energy", type=float, default=0.9)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=0, help="a fixed subset of the training images (0: all)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round-to", type=int, default=1, help="decomposition ranks rounded up to a multiple of this")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta, ds, validator, tester, _ = quantization_setup("resnet56", 32)
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))
    train = ds.train.subset(order[:args.train_images]) if args.train_images else ds.train
    batches = Loader(train, 128, shuffle=True, augment=True, mean=meta.mean, std=meta.std, seed=0)
    recal = [x for x, _ in Loader(ds.train.subset(order[:512]), 128, shuffle=True, augment=True, mean=meta.mean,
                                  std=meta.std, seed=0)]
    work = RUNS / "bench-lowrank" / (f"m{args.macs_reduction}-e{args.energy}-ep{args.epochs}-n{args.train_images}"
                                     + (f"-r{args.round_to}" if args.round_to > 1 else ""))
    work.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, *SHAPE)
    base_macs = count_macs(model, SHAPE)

    def build(name: str):
        if name == "decomposed, budget":
            r = decompose(model, Decomposition(macs_reduction=args.macs_reduction, round_to=args.round_to), example)
            return r.model, {"energy": r.energy, "ranks": r.ranks, "probe_error": r.error}
        if name == "decomposed, energy":
            r = decompose(model, Decomposition(energy=args.energy, round_to=args.round_to), example)
            return r.model, {"energy": r.energy, "ranks": r.ranks, "probe_error": r.error}
        r = prune_to_macs(model, ChannelPruning(method="l1", residual_stream=False), example, args.macs_reduction)
        recalibrate_batchnorm(r.model, recal, 512)
        return r.model, {"ratio": r.notes["ratio"]}

    rows, models = {}, {"unpruned": model}
    rows["unpruned"] = {"macs": base_macs, "params": count_parameters(model), "val": validator.evaluate(model).accuracy,
                        "test": tester.evaluate(model).accuracy}
    for name in ("decomposed, budget", "decomposed, energy", "L1, same MACs"):
        key = name.replace(", ", "-").replace(" ", "-")
        done, path = work / f"{key}.json", work / f"{key}.pt"
        if done.exists() and path.exists():
            rows[name] = json.loads(done.read_text())
            models[name] = load_model(path)[0]
            continue
        started = time.perf_counter()
        m, notes = build(name)
        row = {**notes, "macs": count_macs(m, SHAPE), "params": count_parameters(m),
               "val before fine-tune": validator.evaluate(m).accuracy}
        Finetuner(batches, {"ft": args.epochs}, TrainConfig(lr=0.01, seed=0), run_dir=work / "checkpoints",
                  fingerprint={"images": args.train_images})("ft", m, tag=key)
        m = m.cpu().eval()
        row.update({"val": validator.evaluate(m).accuracy, "test": tester.evaluate(m).accuracy,
                    "minutes": (time.perf_counter() - started) / 60})
        save_model(path, m, meta)
        atomic_write_text(done, json.dumps(row))
        rows[name], models[name] = row, m
        print(name, json.dumps({k: v for k, v in row.items() if k != "ranks"}), flush=True)
    latency = latency_table(models, SHAPE, (1, 256), rounds=args.rounds, repeats=10) if args.rounds else {}
    lines = ["| model | MACs | FLOPs removed | parameters | val before fine-tune | val | test | ORT b1 | ORT b256 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lat = latency.get(name, {})
        speed = {b: f"{latency['unpruned'][f'ort_ms_b{b}'] / lat[f'ort_ms_b{b}']:.2f}x" if lat else "-" for b in (1, 256)}
        lines.append(f"| {name} | {r['macs'] / 1e6:.1f}M | {1 - r['macs'] / base_macs:.1%} | {r['params']:,} | "
                     f"{r.get('val before fine-tune', r['val']):.2%} | {r['val']:.2%} | {r['test']:.2%} | "
                     f"{speed[1]} | {speed[256]} |")
    print("\n".join(lines))
    save("lowrank_resnet56" + (f"_r{args.round_to}" if args.round_to > 1 else ""), {"args": vars(args), "rows": rows, "latency": latency, "table": "\n".join(lines),
                              "data": "CIFAR-10 JPEG; val/test = stratified halves of the test split (seed 0); "
                                      "fine-tunes on the training images (seed 0)"})


if __name__ == "__main__":
    main()
