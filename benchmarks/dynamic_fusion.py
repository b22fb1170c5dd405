"""Dynamic pruning, then layer fusion, on a JPEG-fine-tuned ResNet (issue 6), with the KD/CE ablation.

    python benchmarks/dynamic_fusion.py --stage dynamic          # the threshold search, 3 iterations
    python benchmarks/dynamic_fusion.py --stage fusion --loss kd # then fusion, with distillation
    python benchmarks/dynamic_fusion.py --stage fusion --loss ce # the ablation
    python benchmarks/dynamic_fusion.py --stage report           # the table, from the runs

--arch resnet56 (default) or resnet20 (about 3x cheaper): the ../shared weights, fine-tuned on the JPEG images
first by benchmarks/baseline_resnet56.py --arch ARCH.

Splits: the trials are judged, and channel sparsity measured, on 5,000 CIFAR-10 *test* images (500 per class,
seed 0); the other 5,000 are the test set reported. (The 5,000 held-out training images are no use for feedback
here: the ../shared weights were trained on them, and fine-tuning on the other 45,000 makes the model forget
them, which would read as pruning damage.)

CPU budget: every fine-tune sees --trial-images / --short-images / --long-images training images per epoch (a
fixed random subset, seed 0), far below the paper's GPU schedules (50-200 epochs); each iteration's winner is
then fine-tuned --recover-epochs on --recover-images before the next iteration starts. Every stage resumes after
a kill. --iterations above the paper's 3 writes another run directory, started from a copy of the 3-iteration
one (the same trials, not recomputed). `--stage finetune --finetune-of baseline` fine-tunes the unpruned
model as long, the control for what the extra epochs alone give; with --scratch it trains the architecture of
--finetune-of from new weights instead (lr 0.1): the paper's from-scratch ablation.
`--recalibrate N` re-estimates every trial's BatchNorm statistics on N augmented training images before it is
judged (issue 16). Writes results/dynamic_fusion_<arch>.json (with another --iterations,
results/dynamic_fusion_<arch>_i<N>.json; with --distill and --recalibrate N, _kd and _rc<N> added).
"""

import argparse
import copy
import json
import re
import shutil

import torch

from _common import CIFAR_JPEG, RUNS, save
from baseline_resnet56 import ensure, model_file
from cnnzip.data import Loader, load_image_folder, train_val_split
from cnnzip.distill import Distillation
from cnnzip.finetune import Finetuner
from cnnzip.io import load_model, save_model
from cnnzip.measure import Evaluator, count_macs, count_parameters
from cnnzip.prune.block_removal import BlockRemoval, fresh_copy, remove_thin_blocks
from cnnzip.prune.dynamic import DynamicPruning, dynamic_prune
from cnnzip.report import latency_table
from cnnzip.train import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["dynamic", "finetune", "fusion", "report"], required=True)
    ap.add_argument("--arch", choices=["resnet20", "resnet56"], default="resnet56")
    ap.add_argument("--loss", choices=["kd", "ce"], default="kd")
    ap.add_argument("--drop", type=float, default=0.04, help="dynamic pruning target: below the baseline")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1, help="epochs of every dynamic-pruning trial")
    ap.add_argument("--trial-images", type=int, default=10000)
    ap.add_argument("--distill", action="store_true", help="dynamic stage: trials and recoveries learn from the "
                    "unpruned model (KD, T 4, alpha 0.9); the paper uses cross-entropy")
    ap.add_argument("--recalibrate", type=int, default=0, help="dynamic stage: re-estimate BatchNorm statistics "
                    "of every trial on this many augmented training images (seed 0) before judging it (0: off)")
    ap.add_argument("--recover-epochs", type=int, default=2, help="0: no recovery fine-tune of the winners")
    ap.add_argument("--recover-images", type=int, default=50000)
    ap.add_argument("--final-epochs", type=int, default=5, help="finetune stage: epochs on all training images "
                    "for the pruned model (how much of the gap is fine-tuning budget)")
    ap.add_argument("--finetune-of", default="pruned.pt", help="finetune stage: the model file, relative to the "
                    "dynamic-pruning run directory (e.g. fusion-kd-.../fused-8.pt), or baseline: the "
                    "unpruned model (the control)")
    ap.add_argument("--scratch", action="store_true", help="finetune stage: train --finetune-of's architecture "
                    "from new weights (lr 0.1) for --final-epochs, the from-scratch ablation")
    ap.add_argument("--short-epochs", type=int, default=1)
    ap.add_argument("--short-images", type=int, default=5000)
    ap.add_argument("--long-epochs", type=int, default=1)
    ap.add_argument("--long-images", type=int, default=50000)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--max-drop", type=float, default=0.03)
    ap.add_argument("--max-removals", type=int, default=12, help="CPU budget: blocks removed at most")
    ap.add_argument("--no-short", action="store_true", help="ablation: no short fine-tune of the carrier")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-rounds", type=int, default=5, help="report stage: interleaved latency rounds "
                    "(0: none); run it alone on the machine")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ensure(arch=args.arch)
    root = RUNS / f"bench-dynamic-{args.arch}"
    model, meta = load_model(model_file(args.arch))
    ds = load_image_folder(CIFAR_JPEG)
    test, val = train_val_split(ds.test, 5000, seed=0)  # stratified halves (the folder is sorted by class)
    validator = Evaluator(Loader(val, 500, mean=meta.mean, std=meta.std))
    tester = Evaluator(Loader(test, 500, mean=meta.mean, std=meta.std))
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))

    def trainer(stages: dict, folder, lr=None, hooks=()) -> Finetuner:
        """stage -> (images, epochs): each stage trains on a fixed subset; checkpoints go to folder/checkpoints."""
        def batches(images):
            return Loader(ds.train.subset(order[:images]), 128, shuffle=True, augment=True, mean=meta.mean,
                          std=meta.std, seed=0)

        def report(stage, m):
            print(f"  fine-tuned ({stage}): {validator.evaluate(m.eval()).accuracy:.2%} val", flush=True)

        return Finetuner({s: batches(images) for s, (images, _) in stages.items()},
                         {s: epochs for s, (_, epochs) in stages.items()}, TrainConfig(lr=lr or args.lr, seed=0),
                         hooks=hooks, run_dir=folder / "checkpoints", on_end=report,
                         fingerprint={"images": {s: images for s, (images, _) in stages.items()}})

    name = f"dynamic-d{args.drop}-e{args.epochs}-n{args.trial_images}-lr{args.lr}-r{args.recover_epochs}x" \
           f"{args.recover_images}" + ("-kd" if args.distill else "") \
        + (f"-rc{args.recalibrate}" if args.recalibrate else "")
    dyn_dir = root / (name if args.iterations == 3 else f"{name}-i{args.iterations}")
    paper = root / name  # more iterations extend the paper's 3: start from a copy of that run, if there is one
    if args.iterations > 3 and not dyn_dir.exists() and (paper / "state.json").exists():
        shutil.copytree(paper, dyn_dir, ignore=shutil.ignore_patterns(
            "fusion-*", "pruned*.pt", "final[0-9]*", "scratch[0-9]*", "baseline-*"))
    config = DynamicPruning(drop=args.drop, iterations=args.iterations, recalibrate=args.recalibrate)
    recalibration = [x for x, _ in Loader(ds.train.subset(order[:args.recalibrate]), 128, shuffle=True,
                                          augment=True, mean=meta.mean, std=meta.std, seed=0)] \
        if args.recalibrate else None
    control = args.stage == "finetune" and args.finetune_of == "baseline"  # needs no pruned model
    if args.stage in ("dynamic", "finetune", "fusion") and not control:
        teacher = [Distillation(model)] if args.distill else []  # T = 4, alpha = 0.9
        finetune = trainer({"trial": (args.trial_images, args.epochs),
                            "recover": (args.recover_images, args.recover_epochs)}, dyn_dir, hooks=teacher)
        training = {"epochs": args.epochs, "trial_images": args.trial_images, "recover_epochs": args.recover_epochs,
                    "recover_images": args.recover_images, "lr": args.lr, **({"distill": True} if args.distill else {})}
        dyn = dynamic_prune(model, validator, finetune, config, meta, dyn_dir, recover=args.recover_epochs > 0,
                            training=training, recalibration=recalibration)
        print(f"dynamic: MACs {dyn.macs[0]:,} -> {dyn.macs[1]:,} ({1 - dyn.macs[1] / dyn.macs[0]:.1%} fewer), val "
              f"{dyn.baseline_accuracy:.2%} -> {dyn.accuracy:.2%}", flush=True)
    source = dyn_dir / args.finetune_of
    kind = "scratch" if args.scratch else "ft"
    final = source.with_name(f"{source.stem}-{kind}{args.final_epochs}.pt")
    if args.stage == "finetune" and not final.exists():
        tuned = copy.deepcopy(model) if args.finetune_of == "baseline" else load_model(source)[0]
        if args.scratch:
            tuned = fresh_copy(tuned, seed=0)
        trainer({"final": (50000, args.final_epochs)}, source.parent, lr=0.1 if args.scratch else None)(
            "final", tuned, tag=f"{'scratch' if args.scratch else 'final'}{args.final_epochs}-{source.stem}")
        save_model(final, tuned, meta)
    if args.stage == "fusion":
        short = "noshort" if args.no_short else f"s{args.short_images}x{args.short_epochs}"
        fuse_dir = dyn_dir / (f"fusion-{args.loss}-{short}-l{args.long_images}x{args.long_epochs}-every{args.every}"
                              f"-drop{args.max_drop}-max{args.max_removals}")
        fusion = BlockRemoval(loss=args.loss, long_every=args.every, max_drop=args.max_drop,
                             short=not args.no_short, max_removals=args.max_removals)
        training = {"short_epochs": args.short_epochs, "short_images": args.short_images,
                    "long_epochs": args.long_epochs, "long_images": args.long_images, "lr": args.lr}
        finetune = trainer({"short": (args.short_images, args.short_epochs),
                            "long": (args.long_images, args.long_epochs)}, fuse_dir)
        result = remove_thin_blocks(dyn.model, validator, finetune, fusion, meta, fuse_dir, training=training)
        for r in result.rows:
            print(r, flush=True)

    # The report: everything measured so far, test accuracies computed once per model file.
    report: dict = {"args": vars(args), "run": str(dyn_dir.relative_to(RUNS)), "arch": args.arch,
                    "baseline": {"macs": count_macs(model, (3, 32, 32)), "params": count_parameters(model),
                                 "val": validator.evaluate(model).accuracy, "test": tester.evaluate(model).accuracy}}
    if (dyn_dir / "state.json").exists() and (dyn_dir / "pruned.pt").exists():
        pruned, _ = load_model(dyn_dir / "pruned.pt")
        state = json.loads((dyn_dir / "state.json").read_text())
        report["dynamic"] = {"macs": count_macs(pruned, (3, 32, 32)), "params": count_parameters(pruned),
                             "val": validator.evaluate(pruned).accuracy, "test": tester.evaluate(pruned).accuracy,
                             "trials": state["trials"], "recovered": state.get("recovered", {})}
        report["finetuned"] = {}
        # Models fine-tuned longer, or trained from scratch (the finetune stage).
        for path in sorted([*dyn_dir.glob("**/*-ft[0-9]*.pt"), *dyn_dir.glob("**/*-scratch[0-9]*.pt")]):
            if "checkpoints" in path.parts:
                continue  # a fine-tune's checkpoint, not a model
            m = load_model(path)[0]
            report["finetuned"][str(path.relative_to(dyn_dir))] = {
                "epochs": int(re.search(r"\d+$", path.stem).group()), "macs": count_macs(m, (3, 32, 32)),
                "val": validator.evaluate(m).accuracy, "test": tester.evaluate(m).accuracy}
        for r in report["dynamic"]["recovered"].values():  # each iteration's result, on the test half too
            m = load_model(dyn_dir / r["model"])[0]
            r.update(macs=count_macs(m, (3, 32, 32)), test=tester.evaluate(m).accuracy)
        report["fusion"] = {}
        for state_path in sorted(dyn_dir.glob("fusion-*/state.json")):
            state = json.loads(state_path.read_text())
            rows = []
            for r in state["rows"]:
                row = dict(r)
                snapshot = state_path.parent / r["file"] if r["file"] else dyn_dir / "pruned.pt"
                if r["file"] or r["removed"] == 0:
                    row["test"] = tester.evaluate(load_model(snapshot)[0]).accuracy
                rows.append(row)
            report["fusion"][state_path.parent.name] = {"rows": rows, "stopped": state["stopped"],
                                                        "steps": state["steps"]}
    if args.stage == "report" and args.latency_rounds and "dynamic" in report:
        # Real speed-ups: the models side by side, eager PyTorch and ONNX Runtime, batch 1 and 256.
        models = {"baseline": model, "dynamic": load_model(dyn_dir / "pruned.pt")[0]}
        for name, fusion in report["fusion"].items():
            kept = [r for r in fusion["rows"] if r["file"]]
            if kept:
                models[f"fused {name} ({kept[-1]['removed']} blocks)"] = load_model(dyn_dir / name / kept[-1]["file"])[0]
        report["latency"] = latency_table(models, (3, 32, 32), (1, 256), rounds=args.latency_rounds, repeats=10)
    print(markdown(report))
    save(f"dynamic_fusion_{args.arch}" + ("" if args.iterations == 3 else f"_i{args.iterations}")
         + ("_kd" if args.distill else "") + (f"_rc{args.recalibrate}" if args.recalibrate else ""), report)


def first(*values):
    """The first value that is not None (a trial that removed nothing was not fine-tuned)."""
    return next(v for v in values if v is not None)


def markdown(report: dict) -> str:
    """The tables of BENCHMARKS.md."""
    base = report["baseline"]
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    fewer = lambda macs: f"{100 * (1 - macs / base['macs']):.1f}%"  # noqa: E731
    out = [f"Run `{report['run']}`.", ""]
    if "dynamic" not in report:
        return "\n".join(out + ["(no dynamic-pruning result yet)"])
    dyn = report["dynamic"]
    out += ["| iteration | threshold P | channels removed | MACs | val before fine-tune | val after | meets target |",
            "|---|---|---|---|---|---|---|"]
    for t in dyn["trials"]:
        out.append(f"| {t['iteration'] + 1} | {t['threshold']:.4f} | {t['removed']} | {t['macs'] / 1e6:.1f}M | "
                   f"{pct(first(t.get('before_finetune'), t['accuracy']))} | "
                   f"{pct(first(t.get('after_finetune'), t['accuracy']))} |"
                   f" {'yes' if t['passed'] else 'no'} |")
    out += ["", "| after iteration | winner | MACs | FLOPs removed | val before recovery | val after | kept: val | "
            "kept: test |", "|---|---|---|---|---|---|---|---|"]
    for it, r in sorted(dyn["recovered"].items(), key=lambda kv: int(kv[0])):
        out.append(f"| {int(it) + 1} | `{r['from']}` | {r['macs'] / 1e6:.1f}M | {fewer(r['macs'])} | "
                   f"{pct(r['before'])} | {pct(r['after'])} | {pct(r['accuracy'])} | {pct(r['test'])} |")
    out += ["", "| model | MACs | FLOPs removed | parameters | val | test |", "|---|---|---|---|---|---|",
            f"| {report.get('arch', 'resnet56')} (JPEG fine-tuned) | {base['macs'] / 1e6:.1f}M | - | {base['params']:,} | "
            f"{pct(base['val'])} | {pct(base['test'])} |",
            f"| dynamic pruning | {dyn['macs'] / 1e6:.1f}M | {fewer(dyn['macs'])} | {dyn['params']:,} | "
            f"{pct(dyn['val'])} | {pct(dyn['test'])} |"]
    if report.get("finetuned"):
        out += ["", "Fine-tuned longer (the finetune stage, all training images, lr 0.01 cosine; `-scratch`: new "
                "weights, lr 0.1 cosine):", "",
                "| model | MACs | FLOPs removed | val | test |", "|---|---|---|---|---|"]
        for name, f in report["finetuned"].items():
            out.append(f"| `{name}` | {f['macs'] / 1e6:.1f}M | {fewer(f['macs'])} | {pct(f['val'])} | "
                       f"{pct(f['test'])} |")
    for name, fusion in report.get("fusion", {}).items():
        out += ["", f"Layer fusion `{name}`" + ("" if fusion["stopped"] else " (still running)") + ":", "",
                "| blocks removed | depth | conv layers fused | MACs | FLOPs removed | val | test |",
                "|---|---|---|---|---|---|---|"]
        for r in fusion["rows"]:
            test = pct(r["test"]) if "test" in r else "(below the floor: not kept)"
            out.append(f"| {r['removed']} | {r['depth']} | {r['fused_layers']} | {r['macs'] / 1e6:.1f}M | "
                       f"{fewer(r['macs'])} | {pct(r['accuracy'])} | {test} |")
    if "latency" in report:
        lat = report["latency"]
        b = lat["baseline"]
        keys = [k for k in ("eager_ms_b1", "eager_ms_b256", "ort_ms_b1", "ort_ms_b256") if k in b]
        out += ["", "| model | " + " | ".join(k.replace("_ms_b", " ms, batch ") for k in keys) + " |",
                "|---|" + "---|" * len(keys)]
        for name, row in lat.items():
            out.append(f"| {name} | " + " | ".join(f"{row[k]:.1f} ({b[k] / row[k]:.2f}x)" for k in keys) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
