"""Tests for cnnzip.data. Fast (a few seconds) except the shared CIFAR-10 archive test; never uses the network."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnzip.data as data
from cnnzip.data import (
    Dataset,
    Loader,
    Split,
    load_cifar,
    load_dataset,
    load_digits,
    load_image_folder,
    normalize,
    random_crop_flip,
    sample_crop_flip,
    train_val_split,
)
from cnnzip.data import folder as folder_module
from cnnzip.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR10_JPEG = SHARED / "datasets" / "cifar10-jpeg.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ------------------------------------------------------------------------------------------------ helpers


def make_split(n: int = 100, num_classes: int = 4, shape: tuple[int, int, int] = (3, 8, 8), seed: int = 0) -> Split:
    """A split whose image i stores i in its first two pixels, so tests can tell which images they got."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    idx = torch.arange(n)
    images[:, 0, 0, 0] = (idx % 256).to(torch.uint8)
    images[:, 0, 0, 1] = (idx // 256).to(torch.uint8)
    labels = torch.arange(n) % num_classes
    return Split(images, labels)


def image_ids(split: Split) -> list[int]:
    return (split.images[:, 0, 0, 0].long() + 256 * split.images[:, 0, 0, 1].long()).tolist()


def write_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root: Path, per_batch: int = 6) -> dict[str, np.ndarray]:
    """A small cifar-10-batches-py folder laid out exactly like the official one."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    datas, labels = [], []
    for i in range(1, 7):
        name = f"data_batch_{i}" if i <= 5 else "test_batch"
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        write_pickle(
            folder / name,
            {b"batch_label": name.encode(), b"labels": y, b"data": x,
             b"filenames": [f"img{j}.png".encode() for j in range(per_batch)]},
        )
        datas.append(x)
        labels.append(y)
    write_pickle(
        folder / "batches.meta",
        {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072},
    )
    return {
        "train_data": np.concatenate(datas[:5]),
        "train_labels": np.concatenate(labels[:5]),
        "test_data": datas[5],
        "test_labels": np.array(labels[5]),
    }


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        write_pickle(
            folder / name,
            {b"filenames": [b"f.png"] * n, b"batch_label": name.encode(), b"fine_labels": fine,
             b"coarse_labels": [v // 5 for v in fine], b"data": x},
            protocol=pickle.HIGHEST_PROTOCOL,  # the numpy-2 protocol-5 form must load too
        )
        out[f"{name}_data"], out[f"{name}_labels"] = x, np.array(fine)
    write_pickle(
        folder / "meta",
        {b"fine_label_names": [f"class{i:02d}".encode() for i in range(100)],
         b"coarse_label_names": [f"super{i:02d}".encode() for i in range(20)]},
    )
    return out


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_tree(root: Path, size: tuple[int, int] = (5, 6), seed: int = 0) -> dict[str, np.ndarray]:
    """train/ and test/ with classes 'cat' and 'ant' (sorted: ant=0, cat=1) of lossless PNGs; returns pixels."""
    rng = np.random.default_rng(seed)
    h, w = size
    expected: dict[str, list] = {"train_images": [], "train_labels": [], "test_images": [], "test_labels": []}
    for split, per_class in (("train", 3), ("test", 2)):
        for label, cls in enumerate(("ant", "cat")):
            for i in range(per_class):
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                if split == "train" and cls == "cat" and i == 2:  # one grayscale image: loaded as RGB
                    gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
                    save_png(root / split / cls / f"{i:03d}.png", gray)
                    pixels = np.repeat(gray[:, :, None], 3, axis=2)
                else:
                    save_png(root / split / cls / f"{i:03d}.png", pixels)
                expected[f"{split}_images"].append(pixels.transpose(2, 0, 1))
                expected[f"{split}_labels"].append(label)
    (root / "train" / "ant" / "notes.txt").write_text("not an image: ignored")
    return {k: np.stack(v) if k.endswith("images") else np.array(v) for k, v in expected.items()}


def make_archive(tree_root: Path, archive: Path, wrapper: str | None = None) -> Path:
    """The same bytes on every run (no timestamps, owners or file-system order), so cutting it is repeatable."""
    def fixed(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with open(archive, "wb") as raw:
        gz = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if archive.name.endswith((".gz", ".tgz")) else None
        with tarfile.open(fileobj=gz or raw, mode="w") as tf:
            for split in ("train", "test"):
                for path in sorted((tree_root / split).rglob("*")):
                    name = path.relative_to(tree_root).as_posix()
                    arcname = f"{wrapper}/{name}" if wrapper else name
                    tf.add(path, arcname=arcname, recursive=False, filter=fixed)
        if gz is not None:
            gz.close()
    return archive


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "tree"
    return root, make_tree(root)


# ------------------------------------------------------------------------------------------------ Split / Dataset


def test_split_checks_and_helpers() -> None:
    split = make_split(10)
    assert len(split) == 10
    assert image_ids(split.subset([7, 2])) == [7, 2]
    assert image_ids(split.take(3)) == [0, 1, 2]
    assert image_ids(split.subset(split.labels == 1)) == [1, 5, 9]
    assert len(split.subset([])) == 0
    assert len(split.take(0)) == 0
    transposed = Split(split.images.transpose(2, 3), split.labels)
    assert transposed.images.is_contiguous()
    with pytest.raises(DataError, match="uint8"):
        Split(split.images.float(), split.labels)
    with pytest.raises(DataError, match="int64"):
        Split(split.images, split.labels.int())
    with pytest.raises(DataError, match="10 images but 9 labels"):
        Split(split.images, split.labels[:9])
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        split.subset([3, 10])
    with pytest.raises(DataError, match="take"):
        split.take(11)


def test_dataset_properties_and_checks() -> None:
    train, test = make_split(12, 4, (3, 5, 7)), make_split(8, 4, (3, 5, 7))
    ds = Dataset("toy", train, test, ("a", "b", "c", "d"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (4, 3, (5, 7))
    assert "toy" in repr(ds)
    with pytest.raises(DataError, match="labels range"):
        Dataset("toy", train, test, ("a", "b"), (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(DataError, match="one mean per channel"):
        Dataset("toy", train, test, ("a", "b", "c", "d"), (0.5,), (0.25,) * 3)
    with pytest.raises(DataError, match="share one image shape"):
        Dataset("toy", train, make_split(8, 4, (3, 5, 5)), ("a", "b", "c", "d"), (0.5,) * 3, (0.25,) * 3)


# ------------------------------------------------------------------------------------------------ CIFAR


def test_cifar10_pickle_layout(tmp_path: Path) -> None:
    expected = write_cifar10(tmp_path)
    ds = load_cifar(tmp_path)
    assert ds.name == "cifar10" and ds.classes == CIFAR10_CLASSES
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.test.images.shape == (6, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.train.labels.tolist() == expected["train_labels"].tolist()
    assert ds.test.labels.tolist() == expected["test_labels"].tolist()
    # The 3072-row is the red plane, then green, then blue, each 32 x 32 row-major.
    row = expected["train_data"][13]
    for c in range(3):
        assert int(ds.train.images[13, c, 4, 7]) == int(row[c * 1024 + 4 * 32 + 7])
    assert np.array_equal(ds.test.images.numpy().reshape(6, -1), expected["test_data"])
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    # root may also be the batches folder itself, and load_dataset reads the same files.
    direct = load_cifar(tmp_path / "cifar-10-batches-py")
    assert torch.equal(direct.train.images, ds.train.images)
    assert torch.equal(load_dataset(f"cifar10:{tmp_path}").test.images, ds.test.images)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    expected = write_cifar100(tmp_path)
    ds = load_cifar(tmp_path, num_classes=100)
    assert ds.name == "cifar100" and ds.num_classes == 100 and ds.classes[7] == "class07"
    assert ds.train.images.shape == (12, 3, 32, 32) and len(ds.test) == 5
    assert ds.train.labels.tolist() == expected["train_labels"].tolist()
    assert int(ds.train.images[3, 2, 31, 0]) == int(expected["train_data"][3][2 * 1024 + 31 * 32])
    assert ds.mean == (0.5071, 0.4865, 0.4409)
    assert load_dataset(f"cifar100:{tmp_path / 'cifar-100-python'}").num_classes == 100


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_cifar(tmp_path / "nowhere")
    with pytest.raises(DataError, match="num_classes must be 10"):
        load_cifar(tmp_path, num_classes=20)
    with pytest.raises(DataError, match="holds neither cifar-10-batches-py/ nor its files"):
        load_cifar(tmp_path)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3") as err:
        load_cifar(tmp_path)
    assert "test_batch" in str(err.value) and "download" in str(err.value)
    with pytest.raises(DataError, match="cifar-100-python"):
        load_cifar(tmp_path, num_classes=100)


def test_cifar_rejects_bad_and_malicious_pickles(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle(folder / "data_batch_2", {b"labels": [1, 2]})
    with pytest.raises(DataError, match="no 'data' entry"):
        load_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar(tmp_path)
    write_pickle(folder / "data_batch_2", {b"data": os.getcwd, b"labels": []})  # a callable: refused, never run
    with pytest.raises(DataError, match="refusing"):
        load_cifar(tmp_path)


# ------------------------------------------------------------------------------------------------ image folders


def check_tree(ds: Dataset, expected: dict[str, np.ndarray]) -> None:
    assert ds.classes == ("ant", "cat")
    assert ds.train.images.shape == (6, 3, 5, 6) and ds.test.images.shape == (4, 3, 5, 6)
    for split in ("train", "test"):
        assert np.array_equal(getattr(ds, split).images.numpy(), expected[f"{split}_images"])
        assert getattr(ds, split).labels.tolist() == expected[f"{split}_labels"].tolist()


def test_image_folder_directory_and_archives(tmp_path: Path, tree) -> None:
    root, expected = tree
    from_dir = load_image_folder(root)
    check_tree(from_dir, expected)
    assert from_dir.name == "tree"
    pixels = expected["train_images"].astype(np.float64) / 255
    assert np.allclose(from_dir.mean, pixels.mean(axis=(0, 2, 3)))
    assert np.allclose(from_dir.std, pixels.std(axis=(0, 2, 3)))

    for archive, wrapper in (("flat.tar.gz", None), ("wrapped.tgz", "mydata"), ("plain.tar", "mydata")):
        ds = load_image_folder(make_archive(root, tmp_path / archive, wrapper), cache_dir=tmp_path / "cache")
        check_tree(ds, expected)
        assert ds.mean == pytest.approx(from_dir.mean) and ds.std == pytest.approx(from_dir.std)
    assert ds.name == "plain"
    # A directory that wraps the tree in one folder works as well, also through load_dataset.
    wrapped = make_tree(tmp_path / "outer" / "inner")
    check_tree(load_dataset(str(tmp_path / "outer")), wrapped)
    assert load_dataset(str(root), mean=(0.5,) * 3, std=(0.2,) * 3).mean == (0.5, 0.5, 0.5)


def test_image_folder_cache(tmp_path: Path, tree, monkeypatch: pytest.MonkeyPatch) -> None:
    root, expected = tree
    archive = make_archive(root, tmp_path / "d.tar.gz")
    cache = tmp_path / "cache"
    first = load_image_folder(archive, cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and not list(cache.glob(".tmp-*"))

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded an image although the cache holds the archive")

    monkeypatch.setattr(folder_module, "_decode_image", no_decoding)
    second = load_image_folder(archive, cache_dir=cache, mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    assert torch.equal(first.train.images, second.train.images)
    assert second.mean == (0.1, 0.2, 0.3)  # given stats override the cached ones
    monkeypatch.undo()

    # New archive bytes (one pixel changed) -> a new cache key and freshly decoded pixels.
    pixels = expected["train_images"][0].transpose(1, 2, 0).copy()
    pixels[0, 0, 0] ^= 0xFF
    save_png(root / "train" / "ant" / "000.png", pixels)
    archive = make_archive(root, tmp_path / "d.tar.gz")
    third = load_image_folder(archive, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2
    assert int(third.train.images[0, 0, 0, 0]) == int(pixels[0, 0, 0])

    # A damaged cache file is ignored (with a warning) and rewritten.
    for f in cache.glob("*.npz"):
        f.write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="unreadable cache"):
        fourth = load_image_folder(archive, cache_dir=cache)
    assert torch.equal(fourth.train.images, third.train.images)


def test_image_folder_cache_env(tmp_path: Path, tree, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = tree
    monkeypatch.setenv("CNNZIP_CACHE", str(tmp_path / "envcache"))
    assert data.default_cache_dir() == tmp_path / "envcache"
    load_image_folder(make_archive(root, tmp_path / "d.tar"))
    assert len(list((tmp_path / "envcache").glob("*.npz"))) == 1


def test_image_folder_errors(tmp_path: Path, tree) -> None:
    root, _ = tree
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="neither a directory nor"):
        load_image_folder(tmp_path / "x.zip")
    with pytest.raises(DataError, match="give both mean= and std="):
        load_image_folder(root, mean=(0.5, 0.5, 0.5))
    with pytest.raises(DataError, match="one std per channel"):
        load_image_folder(root, mean=(0.5, 0.5, 0.5), std=(0.2,))

    bad = tmp_path / "bad"
    make_tree(bad)
    (bad / "test" / "cat").rename(bad / "test" / "cow")
    with pytest.raises(DataError, match="only in train/: cat; only in test/: cow"):
        load_image_folder(bad)
    with pytest.raises(DataError, match="only in train/: cat"):
        load_image_folder(make_archive(bad, tmp_path / "bad.tar.gz"), cache_dir=tmp_path / "c")
    (bad / "test" / "cow").rename(bad / "test" / "cat")
    (bad / "test" / "bee").mkdir()
    (bad / "train" / "bee").mkdir()
    with pytest.raises(DataError, match=r"train/bee/ holds no"):
        load_image_folder(bad)
    with pytest.raises(DataError, match=r"train/bee/ holds no"):  # empty folders survive in archives too
        load_image_folder(make_archive(bad, tmp_path / "empty.tar"), cache_dir=tmp_path / "c")
    for sub in ("train", "test"):
        (bad / sub / "bee").rmdir()

    (bad / "test" / "cat" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"cannot decode image .*test/cat/001\.png"):
        load_image_folder(bad)
    with pytest.raises(DataError, match=r"cannot decode image .*test/cat/001\.png"):
        load_image_folder(make_archive(bad, tmp_path / "corrupt.tar.gz"), cache_dir=tmp_path / "c")
    save_png(bad / "test" / "cat" / "001.png", np.zeros((7, 6, 3), np.uint8))
    with pytest.raises(DataError, match=r"test/cat/001\.png is 6x7 pixels \(width x height\) but .*train/ant/000\.png is 6x5"):
        load_image_folder(bad)

    no_test = tmp_path / "no_test"
    make_tree(no_test)
    for f in sorted((no_test / "test").rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    (no_test / "test").rmdir()
    with pytest.raises(DataError, match="no test/ folder"):
        load_image_folder(no_test)
    with pytest.raises(DataError, match="no train/ or test/"):
        load_image_folder(root / "train")


def test_image_folder_bad_archives(tmp_path: Path, tree) -> None:
    root, _ = tree
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(make_archive(root, tmp_path / "whole.tar.gz").read_bytes()[:300])
    with pytest.raises(DataError, match="cannot read archive"):
        load_image_folder(truncated, cache_dir=tmp_path / "c")
    two = tmp_path / "two.tar"
    with tarfile.open(two, "w") as tf:
        tf.add(root / "train", arcname="a/train")
        tf.add(root / "test", arcname="b/test")
    with pytest.raises(DataError, match="several train/test trees"):
        load_image_folder(two, cache_dir=tmp_path / "c")
    nothing = tmp_path / "nothing.tar"
    with tarfile.open(nothing, "w") as tf:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="no train/ or test/"):
        load_image_folder(nothing, cache_dir=tmp_path / "c")


# ------------------------------------------------------------------------------------------------ digits, specs


def test_digits() -> None:
    ds = load_digits()
    assert ds.name == "digits" and ds.num_classes == 10 and ds.classes[3] == "3"
    assert ds.train.images.shape == (1438, 1, 8, 8) and ds.test.images.shape == (359, 1, 8, 8)
    assert ds.in_channels == 1 and ds.image_size == (8, 8)
    assert int(ds.train.images.max()) == 255 and len(ds.mean) == len(ds.std) == 1
    counts = torch.bincount(ds.test.labels, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified: about 20% of each ~180-image class
    again = load_digits()
    assert torch.equal(again.test.images, ds.test.images)
    with pytest.raises(DataError, match="test_fraction"):
        load_digits(test_fraction=1.5)


def test_load_dataset_specs(tmp_path: Path) -> None:
    assert load_dataset("digits").name == "digits"
    with pytest.raises(DataError, match="accepted forms") as err:
        load_dataset("imagenet")
    assert "cifar10:<root>" in str(err.value) and "digits" in str(err.value)
    with pytest.raises(DataError, match="lacks the root folder"):
        load_dataset("cifar10:")
    with pytest.raises(DataError, match="does not accept these options"):
        load_dataset("digits", cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ train_val_split


def test_train_val_split() -> None:
    split = make_split(1000, num_classes=4)
    keep = torch.ones(1000, dtype=torch.bool)
    keep[torch.arange(0, 1000, 4)[:150]] = False  # class 0 now has 100 images, classes 1-3 have 250
    split = split.subset(torch.nonzero(keep).flatten())
    train, val = train_val_split(split, val_size=170, seed=3)
    assert (len(train), len(val)) == (680, 170)
    train_ids, val_ids = image_ids(train), image_ids(val)
    assert not set(train_ids) & set(val_ids) and sorted(train_ids + val_ids) == sorted(image_ids(split))
    assert train_ids == sorted(train_ids) and val_ids == sorted(val_ids)  # original order kept
    assert torch.bincount(val.labels).tolist() == [20, 50, 50, 50]  # 170 * (100, 250, 250, 250) / 850
    again, val_again = train_val_split(split, val_size=170, seed=3)
    assert image_ids(val_again) == val_ids and image_ids(again) == train_ids
    assert image_ids(train_val_split(split, val_size=170, seed=4)[1]) != val_ids
    assert len(train_val_split(split, val_size=0.1)[1]) == 85
    odd = train_val_split(split, val_size=7)[1]
    assert len(odd) == 7 and sorted(torch.bincount(odd.labels, minlength=4).tolist()) == [1, 2, 2, 2]


@pytest.mark.parametrize("size", [0, 850, 5000, 1.0, 0.0, -0.5, True, "10"])
def test_train_val_split_bad_sizes(size: object) -> None:
    with pytest.raises(DataError, match="val_size"):
        train_val_split(make_split(850), val_size=size)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ batching


def reference_crop_flip(images: torch.Tensor, top, left, flip, padding: int) -> torch.Tensor:
    """The naive per-image version: pad with zeros, slice, flip."""
    n, c, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(n):
        padded = torch.zeros((c, h + 2 * padding, w + 2 * padding), dtype=images.dtype)
        padded[:, padding : padding + h, padding : padding + w] = images[i]
        crop = padded[:, int(top[i]) : int(top[i]) + h, int(left[i]) : int(left[i]) + w]
        out[i] = crop.flip(-1) if bool(flip[i]) else crop
    return out


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_random_crop_flip_matches_naive(padding: int) -> None:
    images = make_split(64, shape=(3, 8, 10)).images
    out = random_crop_flip(images, torch.Generator().manual_seed(5), padding=padding)
    top, left, flip = sample_crop_flip(64, torch.Generator().manual_seed(5), padding=padding)
    assert torch.equal(out, reference_crop_flip(images, top, left, flip, padding))
    assert 0 < int(flip.sum()) < 64
    if padding:
        assert len(set(top.tolist())) > 1 and int(top.max()) <= 2 * padding


def test_normalize() -> None:
    images = make_split(5).images
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x = normalize(images, mean, std)
    ref = (images.double() / 255 - torch.tensor(mean).view(3, 1, 1).double()) / torch.tensor(std).view(3, 1, 1).double()
    assert x.dtype == torch.float32 and torch.allclose(x.double(), ref, atol=1e-5)
    assert torch.allclose(normalize(images[0], mean, std), x[0])
    with pytest.raises(DataError, match="uint8"):
        normalize(images.float(), mean, std)
    with pytest.raises(DataError, match="channel"):
        normalize(images, (0.5,), (0.5,))


def collect(loader: Loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def test_loader_batches_and_determinism() -> None:
    split = make_split(300, num_classes=3)
    stats = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4)}
    plain = Loader(split, 128, **stats)
    assert len(plain) == 3 and len(Loader(split, 128, drop_last=True, **stats)) == 2
    batches = collect(plain)
    assert [len(y) for _, y in batches] == [128, 128, 44]
    assert torch.equal(batches[0][0], normalize(split.images[:128], **stats))
    assert batches[0][0].dtype == torch.float32 and batches[0][1].dtype == torch.int64
    assert torch.equal(torch.cat([y for _, y in batches]), split.labels)

    torch.manual_seed(0)
    rng_state = torch.get_rng_state()
    a = Loader(split, 64, shuffle=True, augment=True, seed=7, **stats)
    b = Loader(split, 64, shuffle=True, augment=True, seed=7, **stats)
    a.set_epoch(3)
    b.set_epoch(3)
    first, second = collect(a), collect(b)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, second, strict=True))
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, collect(a), strict=True))  # re-iterable
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG was never touched
    a.set_epoch(4)
    assert not torch.equal(collect(a)[0][1], first[0][1])
    assert not torch.equal(collect(Loader(split, 64, shuffle=True, seed=8, **stats))[0][1],
                           collect(Loader(split, 64, shuffle=True, seed=7, **stats))[0][1])
    seen = torch.cat([y for _, y in first])
    assert len(seen) == 300 and torch.bincount(seen).tolist() == [100, 100, 100]


def test_loader_augmentation_matches_reference() -> None:
    split = make_split(50, shape=(3, 6, 6))
    split = Split(torch.full_like(split.images, 255), split.labels)  # white images: padding shows as black
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
    loader = Loader(split, 16, shuffle=True, augment=True, mean=mean, std=std, seed=1)
    loader.set_epoch(2)
    gen = loader.generator(2)
    order = torch.randperm(50, generator=gen)
    for b, (x, y) in enumerate(loader):
        idx = order[b * 16 : (b + 1) * 16]
        top, left, flip = sample_crop_flip(len(idx), gen, 4)
        ref = reference_crop_flip(split.images[idx], top, left, flip, 4)
        assert torch.equal(y, split.labels[idx])
        assert torch.allclose(x, normalize(ref, mean, std))
    # Padded pixels are zero *before* normalisation: they become (0 - mean) / std.
    padded_value = torch.tensor([(0 - m) / s for m, s in zip(mean, std, strict=True)]).view(3, 1, 1)
    assert bool(torch.isclose(x, padded_value.expand_as(x[0])).any())


def test_loader_errors() -> None:
    split = make_split(10)
    with pytest.raises(DataError, match="batch_size"):
        Loader(split, 0, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(DataError, match="one mean per channel"):
        Loader(split, 4, mean=(0.5,), std=(0.5,) * 3)
    with pytest.raises(DataError, match="positive"):
        Loader(split, 4, mean=(0.5,) * 3, std=(0.5, 0.0, 0.5))
    with pytest.raises(DataError, match="epoch"):
        Loader(split, 4, mean=(0.5,) * 3, std=(0.5,) * 3).set_epoch(-1)


# ------------------------------------------------------------------------------------------------ the shared archive


@pytest.fixture(scope="session")
def cifar10_jpeg_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CIFAR10_JPEG.is_file():
        pytest.skip(f"{CIFAR10_JPEG} is absent")
    return tmp_path_factory.mktemp("cnnzip-cache")


@pytest.mark.shared
def test_shared_cifar10_jpeg_archive(cifar10_jpeg_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_image_folder(CIFAR10_JPEG, cache_dir=cifar10_jpeg_cache)
    assert (len(ds.train), len(ds.test)) == (50_000, 10_000)
    assert ds.classes == CIFAR10_CLASSES
    assert ds.train.images.shape[1:] == (3, 32, 32) and ds.in_channels == 3 and ds.image_size == (32, 32)
    assert torch.bincount(ds.train.labels).tolist() == [5000] * 10
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    assert ds.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=0.01)  # JPEG barely moves the statistics

    monkeypatch.setattr(folder_module, "_decode_image", lambda *a: pytest.fail("decoded despite the cache"))
    start = time.perf_counter()
    cached = load_image_folder(CIFAR10_JPEG, cache_dir=cifar10_jpeg_cache)
    assert time.perf_counter() - start < 5  # well under 1 s on an idle machine; loose for busy CI
    assert torch.equal(cached.test.images, ds.test.images)
