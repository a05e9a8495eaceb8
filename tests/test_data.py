"""edgekd.data: sources, split, preprocessing, DeviceLoader, build_data. Uses real CIFAR-10 JPEGs."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.data import build_data, load_split_images
from edgekd.data.loader import DeviceLoader
from edgekd.data.preprocess import normalize, prepare_image, preprocessing_spec
from edgekd.data.cifar import load_cifar
from edgekd.data.sources import DATASET_STATS, channel_stats, load_digits, load_imagefolder
from edgekd.data.split import make_split, split_fingerprint
from edgekd.errors import DataError

REPO = Path(__file__).resolve().parents[1]
CIFAR_DIR = Path(os.environ.get("EDGEKD_CIFAR10_DIR", REPO.parent / "shared/data/cifar10/train"))
needs_cifar = pytest.mark.skipif(not CIFAR_DIR.is_dir(), reason=f"CIFAR-10 JPEGs not found at {CIFAR_DIR} (set EDGEKD_CIFAR10_DIR)")
PER_CLASS = 200


def _cifar_files(per_class: int) -> dict[str, list[Path]]:
    return {c.name: sorted(c.glob("*.jpg"))[:per_class] for c in sorted(CIFAR_DIR.iterdir()) if c.is_dir()}


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    """A 2,000-image ImageFolder of symlinks to real CIFAR-10 JPEGs."""
    if not CIFAR_DIR.is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {CIFAR_DIR} (set EDGEKD_CIFAR10_DIR)")
    root = tmp_path_factory.mktemp("folder")
    for cls, files in _cifar_files(PER_CLASS).items():
        (root / cls).mkdir()
        for f in files:
            (root / cls / f.name).symlink_to(f)
    return root


# ---------------------------------------------------------------- sources


def test_digits_shape_and_classes():
    d = load_digits()
    assert d.images.shape == (1797, 32, 32, 1) and d.images.dtype == np.uint8
    assert d.labels.dtype == np.int64 and sorted(set(d.labels.tolist())) == list(range(10))
    assert d.class_names == [str(i) for i in range(10)]
    assert d.images.max() == 255 and d.images.min() == 0
    assert load_digits(8).images.shape == (1797, 8, 8, 1)


def test_digits_read_from_sklearns_file_are_sklearns_digits():
    """edgekd reads scikit-learn's digits file without importing sklearn: the very arrays load_digits gives."""
    from sklearn.datasets import load_digits as sk_load_digits

    from edgekd.data.sources import _digits_csv, digits_arrays

    assert _digits_csv() is not None  # found from the metadata, so sklearn was not needed
    images, labels = digits_arrays()
    sk = sk_load_digits()
    assert np.array_equal(images, sk.images) and np.array_equal(labels, sk.target) and labels.dtype == np.int64


def test_imagefolder_matches_pil(small_folder):
    data = load_imagefolder(small_folder)
    assert data.images.shape == (10 * PER_CLASS, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.class_names == sorted(p.name for p in small_folder.iterdir())
    expected_files = [f for cls in data.class_names for f in sorted((small_folder / cls).iterdir())]
    assert data.labels.tolist() == [data.class_names.index(f.parent.name) for f in expected_files]
    expected = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in expected_files])
    np.testing.assert_array_equal(data.images, expected)


def test_imagefolder_cache_round_trip(small_folder, tmp_path):
    cache = tmp_path / "cache"
    first = load_imagefolder(small_folder, cache_dir=cache)
    (npz,) = cache.glob("*.npz")
    again = load_imagefolder(small_folder, cache_dir=cache)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    assert again.class_names == first.class_names
    # The cache really is read: tampered contents under the same key come back.
    np.savez(npz, images=first.images[::-1], labels=first.labels, class_names=np.array(first.class_names))
    np.testing.assert_array_equal(load_imagefolder(small_folder, cache_dir=cache).images, first.images[::-1])
    # A different image_size is a different key.
    assert load_imagefolder(small_folder, image_size=16, cache_dir=cache).images.shape[1:] == (16, 16, 3)
    assert len(list(cache.glob("*.npz"))) == 2


def test_imagefolder_cache_invalidated_by_changed_file(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "a" / "x.png")
    Image.new("RGB", (8, 8), (40, 50, 60)).save(root / "b" / "y.png")
    cache = tmp_path / "cache"
    assert load_imagefolder(root, cache_dir=cache).images[0, 0, 0].tolist() == [10, 20, 30]
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "a" / "x.png")
    os.utime(root / "a" / "x.png", ns=(1, 1))  # mtime surely differs from the first version's
    assert load_imagefolder(root, cache_dir=cache).images[0, 0, 0].tolist() == [1, 2, 3]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_imagefolder(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_imagefolder(empty)
    (empty / "cat").mkdir()
    with pytest.raises(DataError, match=r"cat has no files"):
        load_imagefolder(empty)
    (empty / "cat" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"only 1 non-image files.*jpg"):
        load_imagefolder(empty)


@needs_cifar
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_imagefolder_corrupt_jpeg_named(tmp_path, damage):
    root = tmp_path / "root"
    (root / "cat").mkdir(parents=True)
    good = sorted((CIFAR_DIR / "cat").glob("*.jpg"))[:3]
    for f in good:
        (root / "cat" / f.name).write_bytes(f.read_bytes())
    blob = good[0].read_bytes()
    (root / "cat" / "bad.jpg").write_bytes(os.urandom(300) if damage == "garbage" else blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.jpg"):
        load_imagefolder(root)


def test_imagefolder_mixed_sizes(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    big = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(small).save(root / "a" / "1.png")
    Image.fromarray(big).convert("L").save(root / "a" / "2.png")  # grey file: converted to RGB
    with pytest.raises(DataError, match="differ in size.*data.image_size"):
        load_imagefolder(root)
    data = load_imagefolder(root, image_size=32)
    np.testing.assert_array_equal(data.images[0], small)
    spec = preprocessing_spec(32, (0.5,) * 3, (0.5,) * 3, 3)
    np.testing.assert_array_equal(data.images[1], prepare_image(Image.open(root / "a" / "2.png"), spec))


def test_channel_stats_exact():
    images = np.random.default_rng(1).integers(0, 256, (50, 7, 5, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    x = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, x.std(0), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- CIFAR python batches


def _rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # the official R, G, B planes


@pytest.fixture(scope="module")
def real_images() -> tuple[np.ndarray, np.ndarray]:
    if not CIFAR_DIR.is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {CIFAR_DIR} (set EDGEKD_CIFAR10_DIR)")
    files = [(f, i) for i, (_, fs) in enumerate(_cifar_files(6).items()) for f in fs]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in files]), np.array([i for _, i in files])


def _write_fake_cifar10(root: Path, images, labels, protocol: int) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = [c.encode() for c in sorted(p.name for p in CIFAR_DIR.iterdir())]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": 12, b"num_vis": 3072}, f, protocol)
    for b, sl in enumerate([slice(i * 12, (i + 1) * 12) for i in range(5)], start=1):
        batch = {b"batch_label": f"training batch {b} of 5".encode(), b"labels": [int(v) for v in labels[sl]],
                 b"data": _rows(images[sl]), b"filenames": [b"x.png"] * len(labels[sl])}  # fmt: skip
        with open(base / f"data_batch_{b}", "wb") as f:
            pickle.dump(batch, f, protocol)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"labels": [int(v) for v in labels[:5]], b"data": _rows(images[:5])}, f, protocol)
    return base


@pytest.mark.parametrize("protocol", [3, 4])
def test_cifar10_batches_read_back_exactly(tmp_path, real_images, protocol):
    images, labels = real_images
    _write_fake_cifar10(tmp_path, images, labels, protocol)
    train = load_cifar(tmp_path, "cifar10", train=True)
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels)
    assert train.labels.dtype == np.int64 and train.class_names[0] == "airplane" and len(train.class_names) == 10
    test = load_cifar(tmp_path, "cifar10", train=False)
    np.testing.assert_array_equal(test.images, images[:5])


def test_cifar100_batches(tmp_path, real_images):
    images, labels = real_images
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    with open(base / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    with open(base / "train", "wb") as f:
        pickle.dump({b"data": _rows(images), b"fine_labels": [int(v) * 7 for v in labels], b"coarse_labels": [0] * 60}, f)
    data = load_cifar(tmp_path, "cifar100")
    np.testing.assert_array_equal(data.images, images)
    assert data.labels.tolist() == [int(v) * 7 for v in labels] and data.class_names[99] == "c99"


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_refused(tmp_path, real_images):
    images, labels = real_images
    base = _write_fake_cifar10(tmp_path, images, labels, 4)
    marker = tmp_path / "pwned"
    with open(base / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _rows(images[:2]), b"labels": [0, 1], b"x": _Evil(marker)}, f)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt|os)\.system from .*data_batch_3"):
        load_cifar(tmp_path, "cifar10")
    assert not marker.exists()


def test_cifar_missing_and_bad_files(tmp_path, real_images):
    with pytest.raises(DataError, match=r"CIFAR-10 not found under .*cifar-10-batches-py; put the python version there.*download: true"):
        load_cifar(tmp_path, "cifar10")
    with pytest.raises(DataError, match=r"CIFAR-100 not found under .*cifar-100-python"):
        load_cifar(tmp_path, "cifar100")
    base = _write_fake_cifar10(tmp_path, *real_images, 4)
    (base / "data_batch_2").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_2 is not a CIFAR python batch"):
        load_cifar(tmp_path, "cifar10")
    with open(base / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)
    with pytest.raises(DataError, match=r"labels in \[0, 10\)"):
        load_cifar(tmp_path, "cifar10")


@pytest.mark.slow  # a Python process that tries the network
def test_cifar_download_offline_is_a_clean_error(tmp_path):
    try:
        socket.getaddrinfo("www.cs.toronto.edu", 443)
        pytest.skip("network is reachable: this test would download 170 MB")
    except OSError:
        pass
    code = f"from edgekd.data.cifar import load_cifar\nload_cifar({str(tmp_path)!r}, 'cifar10', download=True)"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.skip("offline download attempt did not fail within 30 s")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edgekd.errors.DataError: downloading CIFAR-10 to") and "extract it" in last, proc.stderr


# ---------------------------------------------------------------- split


def test_split_deterministic_disjoint_sized():
    s = make_split(1000, val_fraction=0.1, tune_size=50, seed=3)
    assert [len(s[k]) for k in ("train", "val", "tune")] == [850, 100, 50]
    assert all(s[k].dtype == np.int64 and np.all(np.diff(s[k]) > 0) for k in s)
    allidx = np.concatenate(list(s.values()))
    assert len(np.unique(allidx)) == 1000 and allidx.min() == 0 and allidx.max() == 999
    again = make_split(1000, val_fraction=0.1, tune_size=50, seed=3)
    assert all(np.array_equal(s[k], again[k]) for k in s) and split_fingerprint(s) == split_fingerprint(again)
    other = make_split(1000, val_fraction=0.1, tune_size=50, seed=4)
    assert not np.array_equal(s["val"], other["val"]) and split_fingerprint(s) != split_fingerprint(other)
    assert len(make_split(1000, val_size=7, tune_fraction=0.25)["tune"]) == 250
    assert len(make_split(1000, val_size=7)["tune"]) == 0


def test_split_subset_keeps_val():
    full = make_split(500, val_size=40, tune_fraction=0.1, seed=9)
    sub = make_split(500, val_size=40, tune_fraction=0.1, subset=100, seed=9)
    assert np.array_equal(full["val"], sub["val"]) and np.array_equal(full["tune"], sub["tune"])
    assert len(sub["train"]) == 100 and set(sub["train"]) <= set(full["train"])
    assert len(make_split(500, val_size=40, subset=10_000)["train"]) == 460  # a cap, not a demand


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(val_fraction=0.0), r"val_fraction must be in \(0, 1\)"),
        (dict(val_fraction=1.0), r"val_fraction must be in \(0, 1\)"),
        (dict(val_fraction=0.1, val_size=5), "not both"),
        (dict(), "set data.val_fraction"),
        (dict(val_size=0), "val_size must be an integer >= 1"),
        (dict(val_size=60, tune_size=40), "leave no train image"),
        (dict(val_size=5, tune_fraction=-0.1), r"tune_fraction must be in \[0, 1\)"),
        (dict(val_size=5, tune_fraction=0.1, tune_size=3), "not both"),
        (dict(val_size=5, subset=0), "subset must be an integer >= 1"),
        (dict(val_size=5, seed=-1), "split_seed must be an integer >= 0"),
    ],
)
def test_split_errors(kwargs, message):
    with pytest.raises(DataError, match=message):
        make_split(100, **kwargs)


# ---------------------------------------------------------------- loader


def _batches(loader, epoch=0):
    loader.set_epoch(epoch)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@needs_cifar
def test_eval_loader_equals_numpy_normalize(small_folder):
    data = load_imagefolder(small_folder)
    stats = DATASET_STATS["cifar10"]
    loader = DeviceLoader(data.images, data.labels, batch_size=300, mean=stats["mean"], std=stats["std"],
                          device="cpu", shuffle=False, augment=False)  # fmt: skip
    assert len(loader) == 7
    x, y = _batches(loader)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and tuple(x.shape) == (2000, 3, 32, 32)
    assert np.abs(x.numpy() - normalize(data.images, stats["mean"], stats["std"])).max() < 1e-6
    np.testing.assert_array_equal(y.numpy(), data.labels)
    # Augmentation with nothing to do is the eval transform.
    plain = DeviceLoader(data.images, data.labels, batch_size=300, mean=stats["mean"], std=stats["std"],
                         device="cpu", shuffle=False, augment=True, crop_padding=0, hflip=False)  # fmt: skip
    assert torch.equal(_batches(plain)[0], x)


def test_eval_loader_single_channel_matches_normalize():
    d = load_digits()
    mean, std = channel_stats(d.images)
    x, _ = _batches(DeviceLoader(d.images, d.labels, batch_size=256, mean=mean, std=std, device="cpu",
                                 shuffle=False, augment=False))  # fmt: skip
    assert np.abs(x.numpy() - normalize(d.images, mean, std)).max() < 1e-6


def test_augmentation_is_padded_crop_and_flip():
    """Every output is one of the 9x9x2 zero-padded crops/flips; flips ~ 1/2, offsets ~ uniform on [0, 2p]."""
    p, size = 4, 8
    coded = (np.arange(size)[:, None] * 16 + np.arange(size)[None, :] + 1).astype(np.uint8)  # unique per pixel
    padded = np.pad(coded, p)
    candidates = {}
    for oy in range(2 * p + 1):
        for ox in range(2 * p + 1):
            crop = padded[oy : oy + size, ox : ox + size]
            candidates[crop.tobytes()] = (oy, ox, False)
            candidates[crop[:, ::-1].tobytes()] = (oy, ox, True)
    assert len(candidates) == 162
    images = np.repeat(coded[None, :, :, None], 512, axis=0)
    loader = DeviceLoader(images, np.zeros(512), batch_size=64, mean=(0.0,), std=(1.0,), device="cpu",
                          shuffle=True, augment=True, crop_padding=p, seed=5)  # fmt: skip
    found = []
    for epoch in range(4):
        x, _ = _batches(loader, epoch)
        u = np.rint(x.numpy()[:, 0] * 255).astype(np.uint8)
        found += [candidates[img.tobytes()] for img in u]  # KeyError = not a valid crop
    oy, ox, flip = (np.array(v) for v in zip(*found))
    assert abs(flip.mean() - 0.5) < 0.05
    for offsets in (oy, ox):
        counts = np.bincount(offsets, minlength=2 * p + 1)
        assert len(counts) == 2 * p + 1 and counts.min() > 150 and counts.max() < 310, counts


def test_epoch_is_a_pure_function_of_seed_and_epoch():
    d = load_digits()
    make = lambda seed: DeviceLoader(d.images, d.labels, batch_size=128, mean=(0.3,), std=(0.3,), device="cpu",
                                     shuffle=True, augment=True, seed=seed)  # fmt: skip
    a, b = make(1), make(1)
    xa, ya = _batches(a, 3)
    _batches(b, 0)  # b's history must not matter
    xb, yb = _batches(b, 3)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(_batches(a, 4)[0], xa)
    assert not torch.equal(_batches(make(2), 3)[0], xa)


@pytest.mark.parametrize("n", [100, 101])
def test_world_size_two_shards(n):
    images = np.random.default_rng(0).integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
    ids = np.arange(n)  # labels = sample ids, so batches reveal which samples a rank got
    kw = dict(batch_size=16, mean=(0.5,) * 3, std=(0.2,) * 3, device="cpu", shuffle=True, augment=True, seed=7)
    ranks = [DeviceLoader(images, ids, rank=r, world_size=2, **kw) for r in (0, 1)]
    single = DeviceLoader(images, ids, **kw)
    assert len(ranks[0]) == len(ranks[1]) == 4
    (x0, y0), (x1, y1) = (_batches(r, 2) for r in ranks)
    assert len(y0) == len(y1) == (n + 1) // 2
    assert set(y0.tolist()) | set(y1.tolist()) == set(range(n))
    if n % 2 == 0:
        assert not set(y0.tolist()) & set(y1.tolist())
    # The same images, identically augmented, as in a one-process epoch.
    xs, ys = _batches(single, 2)
    by_id = {int(i): xs[k] for k, i in enumerate(ys)}
    assert all(torch.equal(x, by_id[int(i)]) for x, i in zip(torch.cat([x0, x1]), torch.cat([y0, y1])))


def test_drop_last_and_loader_errors():
    images = np.zeros((10, 4, 4, 1), np.uint8)
    kw = dict(mean=(0.0,), std=(1.0,), device="cpu", shuffle=False, augment=False)
    assert len(DeviceLoader(images, np.zeros(10), batch_size=4, **kw)) == 3
    assert len(DeviceLoader(images, np.zeros(10), batch_size=4, drop_last=True, **kw)) == 2
    with pytest.raises(DataError, match="one per channel"):
        DeviceLoader(images, np.zeros(10), batch_size=4, **{**kw, "mean": (0.0, 0.0, 0.0)})
    with pytest.raises(DataError, match="rank"):
        DeviceLoader(images, np.zeros(10), batch_size=4, rank=2, world_size=2, **kw)


# ---------------------------------------------------------------- build_data


def test_build_data_digits():
    dm = build_data("digits", None, image_size=None, val_fraction=0.2, val_size=None, tune_size=100, subset=500, split_seed=1)
    assert (len(dm.train), len(dm.val), len(dm.tune)) == (500, 359, 100)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 32)
    assert dm.mean == channel_stats(dm.train.images)[0] and dm.std == channel_stats(dm.train.images)[1]
    spec = dm.preprocessing()
    assert spec["resize"] == [32, 32] and spec["channel_order"] == "L" and spec["layout"] == "NCHW"
    info = dm.split_info
    assert info.sizes == {"train": 500, "val": 359, "tune": 100} and len(info.fingerprint) == 16
    np.testing.assert_array_equal(load_split_images(info).images, dm.val.images)
    x, y = _batches(dm.eval_loader("tune", 64, "cpu"))
    assert np.abs(x.numpy() - normalize(dm.tune.images, dm.mean, dm.std)).max() < 1e-6
    loader = dm.train_loader(64, "cpu", seed=0)
    assert len(loader) == 8 and tuple(next(iter(loader))[0].shape) == (64, 1, 32, 32)
    no_tune = build_data("digits", None, image_size=16, val_fraction=None, val_size=100)
    assert no_tune.tune is None and no_tune.image_size == 16
    with pytest.raises(DataError, match="no tune split"):
        no_tune.eval_loader("tune", 64, "cpu")


def test_build_data_errors(tmp_path):
    with pytest.raises(DataError, match="allowed: digits, cifar10, cifar100, imagefolder"):
        build_data("mnist", None, image_size=None, val_fraction=0.1, val_size=None)
    with pytest.raises(DataError, match="data.root is required for imagefolder"):
        build_data("imagefolder", None, image_size=None, val_fraction=0.1, val_size=None)
    with pytest.raises(DataError, match="data.root is required for cifar10"):
        build_data("cifar10", None, image_size=None, val_fraction=0.1, val_size=None)


def test_build_data_imagefolder_and_rebuild(small_folder, tmp_path):
    dm = build_data("imagefolder", str(small_folder), image_size=None, val_fraction=0.1, val_size=None, split_seed=2)
    assert (len(dm.train), len(dm.val), dm.in_channels, dm.image_size) == (1800, 200, 3, 32)
    assert dm.class_names[0] == "airplane" and dm.mean == channel_stats(dm.train.images)[0]
    rebuilt = load_split_images(dm.split_info)
    np.testing.assert_array_equal(rebuilt.images, dm.val.images)
    np.testing.assert_array_equal(rebuilt.labels, dm.val.labels)
    # Data that changed since the run is refused instead of silently giving another split.
    root = tmp_path / "copy"
    for cls in dm.class_names:
        (root / cls).mkdir(parents=True)
        for f in sorted((small_folder / cls).iterdir())[:5]:
            (root / cls / f.name).symlink_to(f.resolve())
    info = build_data("imagefolder", str(root), image_size=None, val_size=10, val_fraction=None).split_info
    extra = sorted((CIFAR_DIR / "cat").glob("*.jpg"))[-1]
    (root / "cat" / "zz_extra.jpg").symlink_to(extra)
    with pytest.raises(DataError, match="the data changed"):
        load_split_images(info)


def test_build_data_cifar_uses_known_stats(tmp_path, real_images):
    _write_fake_cifar10(tmp_path, *real_images, 4)
    dm = build_data("cifar10", str(tmp_path), image_size=None, val_fraction=None, val_size=10)
    assert (len(dm.train), len(dm.val)) == (50, 10) and dm.mean == DATASET_STATS["cifar10"]["mean"]
    np.testing.assert_array_equal(load_split_images(dm.split_info).images, dm.val.images)


# ---------------------------------------------------------------- torch-free


@pytest.mark.slow  # a Python process without torch
def test_sources_split_preprocess_work_without_torch():
    script = textwrap.dedent(
        """
        import sys

        class BlockTorch:  # behaves like a device where torch is not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision"):
                    raise ImportError(f"blocked: {name}")

        # (Not sys.modules["torch"] = None: scipy, under sklearn, getattr()s whatever
        # sys.modules["torch"] holds and crashes, which a torch-less device never does.)
        sys.meta_path.insert(0, BlockTorch())
        import edgekd.data, edgekd.data.sources, edgekd.data.split, edgekd.data.preprocess
        from edgekd.data.sources import load_digits, channel_stats
        from edgekd.data.preprocess import normalize
        from edgekd.data.split import make_split, load_split_images
        d = load_digits()
        x = normalize(d.images, *channel_stats(d.images))
        assert x.shape == (1797, 1, 32, 32) and str(x.dtype) == "float32"
        info = {"name": "digits", "root": None, "image_size": 32, "val_fraction": 0.2, "val_size": None}
        assert len(load_split_images(info)) == 359
        assert not any(m.split(".")[0] in ("torch", "torchvision") for m in sys.modules)
        print("torch-free ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and "torch-free ok" in proc.stdout, proc.stderr


def test_test_split_is_carved_after_val_and_tune_and_leaves_them_in_place():
    before = make_split(1000, val_fraction=0.1, tune_size=50, subset=300, seed=3)
    after = make_split(1000, val_fraction=0.1, tune_size=50, test_size=400, subset=300, seed=3)
    assert np.array_equal(before["val"], after["val"]) and np.array_equal(before["tune"], after["tune"])
    assert len(after["test"]) == 400 and len(after["train"]) == 300
    parts = [set(after[k].tolist()) for k in ("train", "val", "tune", "test")]
    assert sum(map(len, parts)) == len(set().union(*parts))  # disjoint
    # No test split: the fingerprint of a split made before test existed is unchanged.
    assert split_fingerprint(before) == split_fingerprint({k: before[k] for k in ("train", "val", "tune")})
    assert split_fingerprint(before) != split_fingerprint(after)
    assert len(make_split(1000, val_size=100, test_fraction=0.25)["test"]) == 250
    with pytest.raises(DataError, match="test"):
        make_split(100, val_size=50, test_size=50)
