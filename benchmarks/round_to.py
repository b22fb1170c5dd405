"""Which channel multiple suits ONNX Runtime's kernels on this CPU: ResNet-56 pruned to the same MACs with
`round_to` 1, 4, 8, 16 and 32, timed in fp32 and int8 side by side. Writes results/round_to_<arch>_m<percent>.json.

    python benchmarks/round_to.py [--arch resnet56] [--macs-reduction 0.4] [--rounds 5] [--threads 2]

Speed only: the ../shared weights, pruned by L1 norm (`prune_to_macs`, the blocks' inner channels; the option-A
shortcut keeps the residual stream whole) with no fine-tuning, so no accuracy is reported. int8 files are
calibrated on 256 training images (seed 0). Every file is timed in every round, in a rotating order.
"""

import argparse
import tempfile
from pathlib import Path

import torch

from _common import CIFAR_JPEG, RESNET20, RESNET56, require_shared, save

WEIGHTS = {"resnet20": RESNET20, "resnet56": RESNET56}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=sorted(WEIGHTS), default="resnet56")
    ap.add_argument("--macs-reduction", type=float, default=0.4)
    ap.add_argument("--multiples", default="1,4,8,16,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    require_shared()
    torch.set_num_threads(args.threads)
    import onnxruntime  # noqa: F401 - fail early without the [onnx] extra

    from cnnzip.data import Loader, load_image_folder
    from cnnzip.deploy import compare_onnx_latency, export_onnx
    from cnnzip.errors import ConfigError
    from cnnzip.io import IMAGENET_MEAN, IMAGENET_STD, layer_widths
    from cnnzip.measure import count_macs
    from cnnzip.models import create_model, load_weights
    from cnnzip.prune import ChannelPruning, prune_to_macs
    from cnnzip.quantize import PostTraining, quantize_onnx

    model = load_weights(create_model(args.arch), WEIGHTS[args.arch]).eval()
    shape = (3, 32, 32)
    train = load_image_folder(CIFAR_JPEG).train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    calibration = [x.numpy() for x, _ in Loader(train.subset(order[:256]), 32, mean=IMAGENET_MEAN,
                                                  std=IMAGENET_STD)]
    multiples = [int(m) for m in args.multiples.split(",")]
    base_macs = count_macs(model, shape)
    rows, files = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        variants = {"unpruned": model}
        unreachable = {}
        for m in multiples:
            try:
                result = prune_to_macs(model, ChannelPruning(method="l1", round_to=m, residual_stream=False), torch.zeros(1, *shape),
                                       args.macs_reduction)
            except ConfigError as e:  # e.g. 16 on ResNet-56: the first stage's 16 inner channels stay whole
                unreachable[f"round_to {m}"] = str(e)
                print(f"round_to {m}: {e}", flush=True)
                continue
            variants[f"round_to {m}"] = result.model
        for name, net in variants.items():
            tag = name.replace(" ", "")
            fp32 = export_onnx(net, work / f"{tag}.onnx", shape)
            files[f"{name} fp32"] = fp32
            files[f"{name} int8"] = quantize_onnx(fp32, work / f"{tag}.int8.onnx", calibration,
                                                  PostTraining()).path
            widths = sorted({w[1] for k, w in layer_widths(net).items() if k.endswith(".conv1")})
            macs = count_macs(net, shape)
            rows[name] = {"macs": macs, "macs_ratio": base_macs / macs, "inner_widths": widths}
            print(f"{name}: {macs / 1e6:.1f}M MACs ({base_macs / macs:.2f}x fewer); inner widths {widths}",
                  flush=True)
        times = compare_onnx_latency(files, shape, (1, 256), rounds=args.rounds, repeats=args.repeats)
    for name, row in rows.items():
        for kind in ("fp32", "int8"):
            t = times[f"{name} {kind}"]
            ref = times[f"unpruned {kind}"]
            row[kind] = {**t, **{f"speedup_b{b}": ref[f"ort_ms_b{b}"] / t[f"ort_ms_b{b}"] for b in (1, 256)},
                         **{f"speedup_vs_fp32_b{b}": times["unpruned fp32"][f"ort_ms_b{b}"] / t[f"ort_ms_b{b}"]
                            for b in (1, 256)}}
    print(table(rows))
    save(f"round_to_{args.arch}_m{round(args.macs_reduction * 100)}", {"arch": args.arch, "macs_reduction": args.macs_reduction,
                                   "rounds": args.rounds, "repeats": args.repeats, "threads": args.threads,
                                   "weights": str(WEIGHTS[args.arch].name), "rows": rows,
                                   "unreachable": unreachable})


def table(rows: dict) -> str:
    head = ("| model | MACs | MAC ratio | fp32 b1 | fp32 b256 | int8 b1 | int8 b256 | int8 vs unpruned fp32 b1 | "
            "int8 vs unpruned fp32 b256 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        f, q = r["fp32"], r["int8"]
        lines.append(f"| {name} | {r['macs'] / 1e6:.1f}M | {r['macs_ratio']:.2f}x | {f['speedup_b1']:.2f}x | "
                     f"{f['speedup_b256']:.2f}x | {q['speedup_b1']:.2f}x | {q['speedup_b256']:.2f}x | "
                     f"{q['speedup_vs_fp32_b1']:.2f}x | {q['speedup_vs_fp32_b256']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
