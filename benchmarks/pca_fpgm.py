"""Mixed pruning with PCA and the geometric median (issue 17): the third paper's table, at equal training epochs.

    python benchmarks/pca_fpgm.py --arch vgg16 --width 0.25 --base-epochs 30 --epochs 15 --threads 2
    python benchmarks/pca_fpgm.py --arch alexnet --width 0.25 --base-epochs 30 --epochs 15 --threads 2
    python benchmarks/pca_fpgm.py --arch resnet56 --epochs 4 --finetune-epochs 2 --threads 2  # ../shared weights

The starting model: VGG-16 (BatchNorm, CIFAR head) or AlexNet (CIFAR) at --width, trained from scratch with
`cnnzip train` for --base-epochs (lr 0.1, cosine, batch 128, flips and crops); ResNet-56 is the JPEG-fine-tuned
../shared model (`baseline_resnet56.py`). Then, each with exactly --epochs of training after the start:

- PCA alone: the PCA network (--variance of each layer's activation variance, on --pca-images training images;
  VGG layers that add no dimensions removed) trained from new weights for --epochs (lr 0.1), as the paper does;
- PCA, inherited: the same architecture from the original's weights of the channels it keeps, --epochs at lr 0.01;
- PCA + FPGM: the PCA network trained --epochs minus --finetune-epochs from new weights, FPGM at --ratio per
  layer, then --finetune-epochs at lr 0.01 (`cnnzip.prune.mixed.mixed_prune`);
- PCA + FPGM, inherited (variant inherit-fpgm, our option): the same from the original's weights, every
  epoch at lr 0.01; the same architecture and parameter count as PCA + FPGM;
- FPGM alone: FPGM on the starting model, one ratio for all layers chosen to leave the parameter count of
  PCA + FPGM (the nearest at or below it), fine-tuned --epochs at lr 0.01.

Data: CIFAR-10 JPEG. Training on the 45,000 training images `cnnzip train` trains on (5,000 held out, seed 0);
"val" and "test" are the stratified halves of the test split (seed 0), "test" reported once per final model.
Every stage writes its model before the next starts and fine-tunes checkpoint every epoch, under
$CNNZIP_RUNS/bench-pca/, so a killed run resumes. Writes results/pca_fpgm_<arch>.json.
"""

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace

import torch

from _common import CIFAR_JPEG, RUNS, require_shared, save
from baseline_resnet56 import ensure, model_file
from cnnzip.data import Loader, load_image_folder, train_val_split
from cnnzip.finetune import Finetuner
from cnnzip.io import atomic_write_text, load_model, save_model
from cnnzip.measure import Evaluator, count_macs, count_parameters
from cnnzip.prune import ChannelPruning, prune_channels
from cnnzip.prune.mixed import MixedPruning, mixed_prune
from cnnzip.prune.pca import PcaPruning
from cnnzip.train import TrainConfig, recalibrate_batchnorm


def start(args) -> tuple[torch.nn.Module, object, str]:
    """The starting model, its meta, and the name of its run."""
    if args.arch.startswith("resnet"):
        ensure(arch=args.arch)
        model, meta = load_model(model_file(args.arch))
        return model, meta, f"{args.arch}-ft"
    name = f"{args.arch}-w{args.width}-e{args.base_epochs}"
    out = RUNS / "bench-pca" / name
    if not (out / "model.pt").exists():
        cmd = [sys.executable, "-m", "cnnzip.cli", "train", "--model", args.arch, "--width", str(args.width),
               "--data", str(CIFAR_JPEG), "--epochs", str(args.base_epochs), "--lr", "0.1", "--seed", "0",
               "--out", str(out), "--no-progress", "--threads", str(args.threads)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    model, meta = load_model(out / "model.pt")
    return model, meta, name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["vgg16", "alexnet", "resnet56"], default="vgg16")
    ap.add_argument("--width", type=float, default=0.25, help="VGG/AlexNet width (1.0: the published size)")
    ap.add_argument("--base-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=15, help="training epochs every variant gets after the start")
    ap.add_argument("--finetune-epochs", type=int, default=5, help="PCA + FPGM: epochs after the FPGM surgery")
    ap.add_argument("--variance", type=float, default=0.999)
    ap.add_argument("--pca-images", type=int, default=2048)
    ap.add_argument("--ratio", type=float, default=0.3, help="FPGM ratio on the PCA network")
    ap.add_argument("--variants", default="pca,inherit,pca-fpgm,fpgm", help="any of pca, inherit, pca-fpgm, "
                    "inherit-fpgm, fpgm (fpgm after one of the -fpgm ones)")
    ap.add_argument("--train-images", type=int, default=0, help="train on a fixed subset (0: all 45,000)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not 0 < args.finetune_epochs < args.epochs:
        ap.error("--finetune-epochs must be at least 1 and below --epochs: PCA + FPGM trains the PCA network for "
                 "the difference first")
    require_shared()
    torch.set_num_threads(args.threads)
    model, meta, base = start(args)
    shape = tuple(meta.input_shape)
    ds = load_image_folder(CIFAR_JPEG)
    train, _ = train_val_split(ds.train, 5000, seed=0)
    if args.train_images:
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.train_images])
    test, val = train_val_split(ds.test, 5000, seed=0)
    validator = Evaluator(Loader(val, 500, mean=meta.mean, std=meta.std))
    tester = Evaluator(Loader(test, 500, mean=meta.mean, std=meta.std))
    batches = Loader(train, 128, shuffle=True, augment=True, mean=meta.mean, std=meta.std, seed=0)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    sample = Loader(train.subset(order[:args.pca_images]), 256, mean=meta.mean, std=meta.std)
    recal = [x for x, _ in Loader(train.subset(order[:512]), 128, shuffle=True, augment=True, mean=meta.mean,
                                  std=meta.std, seed=0)]
    work = RUNS / "bench-pca" / (f"{base}-v{args.variance}-p{args.pca_images}-r{args.ratio}-e{args.epochs}"
                                 f"f{args.finetune_epochs}" + (f"-n{args.train_images}" if args.train_images else ""))
    work.mkdir(parents=True, exist_ok=True)

    def trainer(epochs: dict, folder) -> Finetuner:
        return Finetuner(batches, epochs, TrainConfig(lr=0.01, seed=0), run_dir=folder / "checkpoints")

    def scratch_then_tune(epochs: dict, folder):
        tune = trainer(epochs, folder)
        train_new = replace(tune, config=replace(tune.config, lr=0.1))

        def finetune(stage, m, hooks=(), *, tag=None, parameters=None):
            (train_new if stage == "pca" else tune)(stage, m, hooks, tag=tag, parameters=parameters)
        return finetune

    pca = PcaPruning(variance=args.variance, images=args.pca_images)
    rows = {"start": {"macs": count_macs(model, shape), "params": count_parameters(model),
                      "val": validator.evaluate(model).accuracy, "test": tester.evaluate(model).accuracy}}
    plan = None
    for variant in args.variants.split(","):
        done = work / f"{variant}.json"
        if done.exists():
            rows[variant] = json.loads(done.read_text())
            if (work / variant / "state.json").exists():
                plan = plan or json.loads((work / variant / "state.json").read_text())["plan"]
            continue
        started = time.perf_counter()
        if variant in ("pca", "inherit", "pca-fpgm", "inherit-fpgm"):
            fpgm, inherit = variant.endswith("-fpgm"), variant.startswith("inherit")
            config = MixedPruning(pca=pca, ratio=args.ratio if fpgm else 0, inherit=inherit,
                                  recalibrate=512 if fpgm else 0)
            epochs = {"pca": args.epochs - (args.finetune_epochs if fpgm else 0), "fpgm": args.finetune_epochs}
            finetune = trainer(epochs, work / variant) if inherit else scratch_then_tune(epochs, work / variant)
            result = mixed_prune(model, config, sample, finetune, meta, work / variant, evaluator=validator,
                                 recalibration=recal if fpgm else None, training={"epochs": epochs})
            final, plan = result.model, result.plan
            row = {"dropped": result.dropped, "stages": result.stages}
        else:  # FPGM alone, at the parameter count of PCA + FPGM
            goal = rows.get("pca-fpgm", rows.get("inherit-fpgm", {})).get("params")
            if goal is None:
                raise SystemExit("run the pca-fpgm or inherit-fpgm variant first: FPGM alone matches its parameter "
                                 "count")
            final = fpgm_at_params(model, goal, shape)
            recalibrate_batchnorm(final, recal, 512)
            trainer({"fpgm": args.epochs}, work / variant)("fpgm", final, tag="fpgm-alone")
            save_model(work / variant / "pruned.pt", final.cpu(), meta)
            row = {}
        final = final.cpu().eval()
        row.update({"macs": count_macs(final, shape), "params": count_parameters(final),
                    "val": validator.evaluate(final).accuracy, "test": tester.evaluate(final).accuracy,
                    "minutes": (time.perf_counter() - started) / 60})
        atomic_write_text(done, json.dumps(row))
        rows[variant] = row
        print(variant, json.dumps(row), flush=True)

    s = rows["start"]
    lines = ["| model | MACs | FLOPs ratio | parameters | parameter ratio | val | test | test change |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"start": f"{base} (start)", "pca": "PCA alone (new weights)", "inherit": "PCA alone (inherited weights)",
             "pca-fpgm": f"PCA + FPGM {args.ratio}", "inherit-fpgm": f"PCA + FPGM {args.ratio} (inherited weights)",
             "fpgm": "FPGM alone, same parameters"}
    for k, r in rows.items():
        lines.append(f"| {names[k]} | {r['macs'] / 1e6:.1f}M | {s['macs'] / r['macs']:.2f}x | {r['params']:,} | "
                     f"{s['params'] / r['params']:.2f}x | {r['val']:.2%} | {r['test']:.2%} | "
                     f"{100 * (r['test'] - s['test']):+.2f} |")
    print("\n".join(lines))
    save(f"pca_fpgm_{args.arch}", {"args": vars(args), "start": base, "rows": rows, "plan": plan,
                                   "table": "\n".join(lines),
                                   "data": "CIFAR-10 JPEG; training on 45,000 training images (5,000 held out, "
                                   "seed 0); val/test = stratified halves of the test split (seed 0)"})


def fpgm_at_params(model: torch.nn.Module, params: int, shape) -> torch.nn.Module:
    """FPGM at one ratio for every layer (not the residual streams, as the PCA stage), the smallest ratio that
    leaves at most `params` parameters (bisection)."""
    example = torch.zeros(1, *shape)
    lo, hi, best = 0.0, 0.99, None
    for _ in range(14):
        mid = (lo + hi) / 2
        m = prune_channels(model, ChannelPruning(method="fpgm", ratio=mid, residual_stream=False), example).model
        if count_parameters(m) <= params:
            best, hi = m, mid
        else:
            lo = mid
    if best is None:
        raise SystemExit(f"FPGM cannot reach {params:,} parameters")
    return best


if __name__ == "__main__":
    main()
