"""An independent reference for the pretrained CIFAR ResNets: no cnnzip code at all.

It reads JPEGs straight from the tar archive with PIL and numpy, and runs the network as plain functional calls on
the checkpoint's raw tensors (akamaster's ResNet with option-A shortcuts). cnnzip's loader, model zoo and
Evaluator must reproduce its predictions exactly.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ARCHIVE = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def read_test_images(archive: Path = ARCHIVE, limit_per_class: int | None = None):
    """Test images and labels, classes sorted by folder name, files sorted by name within a class."""
    from PIL import Image

    items: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and "test" in parts and member.name.endswith(".jpg"):
                cls = parts[-2]
                items.setdefault(cls, []).append((parts[-1], tar.extractfile(member).read()))
    classes = sorted(items)
    xs, ys = [], []
    for label, cls in enumerate(classes):
        files = sorted(items[cls])[:limit_per_class]
        for _, data in files:
            img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
            xs.append(((img - MEAN) / STD).transpose(2, 0, 1))
            ys.append(label)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys), classes


def _bn(x, sd, prefix):
    return F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"], sd[prefix + ".weight"],
                        sd[prefix + ".bias"], training=False, eps=1e-5)


def resnet_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Forward pass of akamaster's CIFAR ResNet directly from a state dict (keys without `module.`)."""
    out = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for stage in (1, 2, 3):
        i = 0
        while f"layer{stage}.{i}.conv1.weight" in sd:
            p = f"layer{stage}.{i}"
            stride = 2 if (stage > 1 and i == 0) else 1
            h = F.relu(_bn(F.conv2d(out, sd[p + ".conv1.weight"], stride=stride, padding=1), sd, p + ".bn1"))
            h = _bn(F.conv2d(h, sd[p + ".conv2.weight"], padding=1), sd, p + ".bn2")
            short = out
            if stride != 1 or out.shape[1] != h.shape[1]:
                pad = h.shape[1] // 4
                short = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
            out = F.relu(h + short)
            i += 1
    out = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


def load_raw_state_dict(path: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    sd = blob["state_dict"] if "state_dict" in blob else blob
    return {k.removeprefix("module."): v for k, v in sd.items()}


@torch.no_grad()
def reference_predictions(checkpoint: Path, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    sd = load_raw_state_dict(checkpoint)
    return torch.cat([resnet_forward(sd, images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])
