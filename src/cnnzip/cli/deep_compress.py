"""`cnnzip deep-compress`: magnitude pruning, weight sharing and Huffman coding into one shipped file."""

from __future__ import annotations

import json

from ..deep import MagnitudePruning, WeightSharing, deep_compress, load_compressed, save_compressed, sparsity
from ..errors import ConfigError
from ..io import skeleton
from ..report import Section, stage_sizes_plot
from .options import (
    Progress,
    add_data_args,
    add_distill_args,
    add_model_args,
    add_out_args,
    nonnegative,
    prepare,
    start_run,
    write_run_report,
)

NAME = "deep-compress"
TRAINS = True  # runs data-parallel under torchrun (see cnnzip.distributed)
HELP = "magnitude pruning + weight sharing + Huffman coding into one file"
DESCRIPTION = ("Deep compression (Han et al. 2016): zero the smallest weights (masks fixed while fine-tuning), "
               "cluster each layer's surviving weights into 2^bits shared values, Huffman-code indices and "
               "positions, and write OUT/model.cnnz, the file you ship. Prints the size at each stage beside the "
               "entropy bound, and the test accuracy, and checks that the file loads back to the same model. "
               "`cnnzip eval` and `cnnzip info` read the file.")
EPILOG = """examples:
  cnnzip deep-compress runs/resnet56-ft/model.pt --data ../shared/datasets/cifar10-jpeg.tar.gz \\
      --sparsity 0.8 --finetune-epochs 1 --conv-bits 5 --fc-bits 5 --out runs/r56-dc
  cnnzip eval runs/r56-dc/model.cnnz --data ../shared/datasets/cifar10-jpeg.tar.gz"""


def add_arguments(s) -> None:
    add_model_args(s)
    add_data_args(s)
    how = s.add_mutually_exclusive_group()
    how.add_argument("--sparsity", type=float, default=None, help="fraction of conv/linear weights to zero")
    how.add_argument("--std-multiplier", type=float, default=None,
                     help="the paper's rule: zero |w| < k * std(w) in each layer")
    s.add_argument("--scope", choices=["global", "layer"], default="global",
                   help="one magnitude threshold for all layers, or the same sparsity in each")
    s.add_argument("--skip", action="append", default=[], metavar="REGEX",
                   help="keep these weights dense and unshared (repeatable), e.g. conv1.weight")
    s.add_argument("--conv-bits", type=int, default=8, help="index bits for conv layers (2^bits clusters)")
    s.add_argument("--fc-bits", type=int, default=5, help="index bits for linear layers")
    s.add_argument("--finetune-epochs", type=int, default=0, help="epochs after pruning, masks fixed")
    s.add_argument("--centroid-epochs", type=int, default=0, help="epochs of centroid fine-tuning after sharing")
    add_distill_args(s, kinds=True)
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--no-augment", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--per-layer", action="store_true", help="print the size of every layer")
    add_out_args(s, "runs/deep")
    s.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    nonnegative(args, "finetune_epochs", "centroid_epochs")
    if args.distill and args.finetune_epochs == 0 and args.centroid_epochs == 0:
        raise ConfigError("--distill changes how the model is fine-tuned; give --finetune-epochs or --centroid-epochs "
                          "too")
    pruning = None
    if args.sparsity is not None or args.std_multiplier is not None:
        pruning = MagnitudePruning(ratio=args.sparsity, std_multiplier=args.std_multiplier, scope=args.scope,
                                   skip=tuple(args.skip))
    sharing = WeightSharing(conv_bits=args.conv_bits, fc_bits=args.fc_bits, skip=tuple(args.skip))
    say = Progress(args.quiet)
    start_run(args, NAME, ("per_layer",), say=say)
    job = prepare(args, say)
    test = job.evaluator(job.data.test, device="cpu")
    say("evaluating the original model on the test split")
    accuracy = {"original": test.evaluate(job.model).accuracy}

    def before_stage(stage, m):
        accuracy[f"{stage} (before fine-tune)"] = test.evaluate(m).accuracy
        say(f"fine-tuning ({stage}) for {finetune.epochs[stage]} epochs")

    finetune = job.distilling(job.finetuner({"pruned": args.finetune_epochs, "shared": args.centroid_epochs},
                                            on_start=before_stage, sparsity=args.sparsity, std=args.std_multiplier,
                                            scope=args.scope, skip=args.skip, bits=[args.conv_bits, args.fc_bits],
                                            **job.distill_key()))
    say("magnitude pruning and weight sharing (k-means per layer)")
    shared, books = deep_compress(job.model, pruning, sharing, finetune=finetune)
    accuracy["compressed"] = test.evaluate(shared).accuracy
    path = args.out / "model.cnnz"
    say(f"Huffman coding into {path}, then reloading it to check")
    report = save_compressed(path, shared, books, job.out_meta(**{"from": str(args.model_path)}))
    loaded, _ = load_compressed(path, skeleton(job.model))
    if test.evaluate(loaded).accuracy != accuracy["compressed"]:
        raise RuntimeError("internal error: the file does not reload to the compressed model; please report it")
    totals = report.totals()
    (args.out / "report.json").write_text(json.dumps({"sizes": report.as_dict(), "accuracy": accuracy,
                                                       "sparsity": sparsity(shared, args.skip)}, indent=2))
    if args.per_layer:
        print(f"{'layer':<28}{'layout':>7}{'fp32':>11}{'pruned':>11}{'shared':>11}{'huffman':>11}{'entropy':>11}")
        for layer in report.layers:
            print(f"{layer.name:<28}{layer.layout:>7}{layer.dense_fp32:>11,}{layer.pruned_sparse:>11,}"
                  f"{layer.shared:>11,}{layer.huffman:>11,}{layer.entropy:>11,.0f}")
    print(f"weights: fp32 {totals['dense_fp32']:,.0f} B -> pruned {totals['pruned_sparse']:,.0f} -> shared "
          f"{totals['shared']:,.0f} -> Huffman {totals['huffman']:,.0f} (entropy bound {totals['entropy']:,.0f})")
    print(f"file {path}: {totals['file']:,.0f} bytes (raw tensors {totals['raw']:,.0f}, header "
          f"{totals['header']:,.0f}); fp32 state dict {totals['dense_state_dict']:,.0f} bytes: "
          f"{totals['ratio']:.1f}x smaller")
    print(f"sparsity {sparsity(shared, args.skip):.1%}; " + "; ".join(f"{k} {v:.2%}" for k, v in accuracy.items())
          + " (test accuracy; the file reloads to the same accuracy)")
    layers = [layer.__dict__ for layer in report.layers]
    write_run_report(args, NAME, [
        Section("Result", f"{path.name}: {totals['file']:,.0f} bytes, {totals['ratio']:.1f}x smaller than the fp32 "
                f"state dict; sparsity {sparsity(shared, args.skip):.1%}.",
                [["model", "test accuracy"]] + [[k, f"{v:.2%}"] for k, v in accuracy.items()]),
        Section("Bytes per layer at each stage", "The file holds the Huffman column, beside the entropy bound.",
                [["layer", "layout", "fp32", "pruned", "shared", "huffman", "entropy"]]
                + [[x["name"], x["layout"], x["dense_fp32"], x["pruned_sparse"], x["shared"], x["huffman"],
                    round(x["entropy"])] for x in layers],
                images=[("bytes per layer at each stage (log scale)", stage_sizes_plot(layers))])])
    return 0
