"""The two training-data paths (DeviceLoader, HostLoader) give the same batches; choosing between them.

Real data: scikit-learn's bundled digits, plus a slice of real CIFAR-10 JPEGs when present.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.data import DataModule, build_data, choose_loader, loader_for_free_bytes
from edgekd.data.loader import DeviceLoader, HostLoader
from edgekd.errors import DataError

REPO = Path(__file__).resolve().parents[1]
CIFAR_DIR = Path(os.environ.get("EDGEKD_CIFAR10_DIR", REPO.parent / "shared/data/cifar10/train"))
CIFAR_PER_CLASS = 40
PAD = 4


@pytest.fixture(scope="module")
def digits() -> DataModule:
    return build_data("digits", None, image_size=None, val_fraction=0.2, val_size=None)


def _cifar_slice() -> tuple[np.ndarray, np.ndarray]:
    if not CIFAR_DIR.is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {CIFAR_DIR} (set EDGEKD_CIFAR10_DIR)")
    classes = sorted(c for c in CIFAR_DIR.iterdir() if c.is_dir())
    files = [(f, k) for k, c in enumerate(classes) for f in sorted(c.glob("*.jpg"))[:CIFAR_PER_CLASS]]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in files])
    return images, np.array([k for _, k in files])


@pytest.fixture(scope="module", params=["digits", "cifar10"])
def real_set(request, digits) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    """(images, labels = sample ids, mean, std): ids as labels show which sample each row is."""
    if request.param == "digits":
        images = digits.train.images
        mean, std = digits.mean, digits.std
    else:
        images, _ = _cifar_slice()
        mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    return images, np.arange(len(images)), mean, std


def _loaders(images, labels, mean, std, workers, **kw) -> tuple[DeviceLoader, HostLoader]:
    kw = dict(batch_size=96, mean=mean, std=std, device="cpu", shuffle=True, augment=True, crop_padding=PAD,
              hflip=True, seed=11, **kw)  # fmt: skip
    return DeviceLoader(images, labels, **kw), HostLoader(images, labels, workers=workers, **kw)


def _batches(loader, epoch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


# ---------------------------------------------------------------- (a) the same batches


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: worker processes
@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
def test_host_batches_equal_device_batches(real_set, workers, rank, world_size):
    images, ids, mean, std = real_set
    device, host = _loaders(images, ids, mean, std, workers, rank=rank, world_size=world_size)
    assert len(host) == len(device) > 1
    for epoch in (0, 1):
        want, got = _batches(device, epoch), _batches(host, epoch)
        assert len(got) == len(want) == len(device)
        for (xd, yd), (xh, yh) in zip(want, got):
            assert xh.dtype == torch.float32 and yh.dtype == torch.int64 and xh.is_contiguous()
            assert torch.equal(xh, xd) and torch.equal(yh, yd)
    assert not torch.equal(_batches(host, 0)[0][0], _batches(host, 1)[0][0])  # epochs really differ


@pytest.mark.slow  # DataLoader worker processes
def test_host_follows_set_epoch_after_an_abandoned_pass(digits):
    """Persistent workers get the epoch with each index, so a pass cut short does not leak into the next."""
    d = digits.train
    device, host = _loaders(d.images, d.labels, digits.mean, digits.std, workers=2)
    host.set_epoch(0)
    next(iter(host))  # stop after one batch, as a crashing or early-stopping loop would
    for epoch in (3, 0):
        for (xd, yd), (xh, yh) in zip(_batches(device, epoch), _batches(host, epoch), strict=True):
            assert torch.equal(xh, xd) and torch.equal(yh, yd)


def test_train_loader_picks_the_path(digits):
    kw = dict(batch_size=200, device="cpu", seed=4, drop_last=True)
    device, host = digits.train_loader(**kw), digits.train_loader(**kw, loader="host", workers=0)
    assert type(device) is DeviceLoader and type(host) is HostLoader and len(host) == len(device) == 7
    for (xd, yd), (xh, yh) in zip(_batches(device, 2), _batches(host, 2), strict=True):
        assert torch.equal(xh, xd) and torch.equal(yh, yd)


# ---------------------------------------------------------------- (b) the same augmentation statistics


def _with_position_codes(images: np.ndarray) -> np.ndarray:
    """Append two channels holding each pixel's source row + 1 and column + 1 (0 = padding).

    They let the crop offsets and flip of every output be read back exactly,
    while the first channels stay the real images.
    """
    n, h, w, _ = images.shape
    rows = np.broadcast_to(np.arange(1, h + 1, dtype=np.uint8)[None, :, None, None], (n, h, w, 1))
    cols = np.broadcast_to(np.arange(1, w + 1, dtype=np.uint8)[None, None, :, None], (n, h, w, 1))
    return np.concatenate([images, rows, cols], axis=3)


def _decode_augmentation(codes: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row offsets, col offsets, flips) of outputs whose last two channels are position codes."""
    row, col = codes[:, 0].numpy(), codes[:, 1].numpy()  # [B, H, W] int
    h, w = row.shape[1:]
    r, c = h // 2, w // 2  # the centre is never padding when PAD < size / 2
    oy = row[:, r, c] - 1 - r + PAD
    flip = col[:, r, c + 1] < col[:, r, c]  # a flipped crop reads its columns backwards
    ox = np.where(flip, col[:, r, c] - 1 - (w - 1 - c), col[:, r, c] - 1 - c) + PAD
    return oy, ox, flip


def _epoch_stats(loader, epoch: int) -> dict[str, np.ndarray]:
    x = torch.cat([b for b, _ in _batches(loader, epoch)])
    real, codes = x[:, :-2], torch.round(x[:, -2:] * 255).long()  # code channels: mean 0, std 1
    oy, ox, flip = _decode_augmentation(codes)
    return {
        "mean": real.mean(dim=(0, 2, 3)).numpy(),
        "std": real.std(dim=(0, 2, 3)).numpy(),
        "flip": np.array([flip.mean()]),
        "oy": np.bincount(oy, minlength=2 * PAD + 1) / len(oy),
        "ox": np.bincount(ox, minlength=2 * PAD + 1) / len(ox),
    }


@pytest.mark.slow  # DataLoader worker processes
def test_both_paths_have_the_same_augmentation_statistics(digits):
    images = _with_position_codes(digits.train.images)
    ids = np.arange(len(images))
    mean, std = (*digits.mean, 0.0, 0.0), (*digits.std, 1.0, 1.0)
    device, host = _loaders(images, ids, mean, std, workers=2)
    on_device, on_host = _epoch_stats(device, 0), _epoch_stats(host, 0)
    # Same seed: the very same statistics.
    for key in on_device:
        np.testing.assert_array_equal(on_host[key], on_device[key], err_msg=key)
    # Another seed on the host path: the same distribution, up to sampling noise of one epoch (n = 1437).
    other = HostLoader(images, ids, batch_size=96, mean=mean, std=std, device="cpu", shuffle=True, augment=True,
                       crop_padding=PAD, hflip=True, seed=12, workers=0)  # fmt: skip
    resampled = _epoch_stats(other, 0)
    assert not np.array_equal(resampled["oy"], on_device["oy"])
    np.testing.assert_allclose(resampled["mean"], on_device["mean"], atol=0.01)
    np.testing.assert_allclose(resampled["std"], on_device["std"], atol=0.01)
    for stats in (on_device, resampled):
        assert abs(stats["flip"][0] - 0.5) < 0.05
        for key in ("oy", "ox"):
            assert len(stats[key]) == 2 * PAD + 1 and np.abs(stats[key] - 1 / (2 * PAD + 1)).max() < 0.04, stats[key]


# ---------------------------------------------------------------- (c) choosing a path


def test_choose_loader_on_cpu_and_pass_through():
    huge = 10**15  # a petabyte: still 'device' on the CPU, whose device memory is host memory
    assert choose_loader("auto", huge, "cpu") == "device"
    assert choose_loader("auto", 0, torch.device("cpu")) == "device"
    assert choose_loader("host", 1, "cpu") == "host" and choose_loader("device", huge, "cpu") == "device"
    assert choose_loader("auto", np.int64(5), "cpu") == "device"  # ndarray.nbytes-like integers


def test_choose_loader_free_memory_rule():
    gib = 1 << 30
    assert loader_for_free_bytes(150_000_000, 70 * gib) == "device"  # CIFAR on an H100
    assert loader_for_free_bytes(20 * gib, 70 * gib) == "host"  # ImageNet-64 does not fit in a quarter
    assert loader_for_free_bytes(25, 100) == "device" and loader_for_free_bytes(26, 100) == "host"  # the 25% edge
    assert loader_for_free_bytes(1, 0) == "host"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_choose_loader_on_cuda():
    free, _ = torch.cuda.mem_get_info()
    assert choose_loader("auto", 1, "cuda") == "device"
    assert choose_loader("auto", free, "cuda") == "host"


# ---------------------------------------------------------------- (d) bad arguments


def test_bad_arguments_are_data_errors(digits):
    d = digits.train
    kw = dict(batch_size=32, mean=digits.mean, std=digits.std, device="cpu", shuffle=True, augment=True)
    for workers in (-1, 1.5, True, "2"):
        with pytest.raises(DataError, match="workers must be an integer >= 0"):
            HostLoader(d.images, d.labels, workers=workers, **kw)
    with pytest.raises(DataError, match="HostLoader needs non-empty uint8 images"):
        HostLoader(d.images.astype(np.float32), d.labels, **kw)
    with pytest.raises(DataError, match="labels"):
        HostLoader(d.images, d.labels[:-1], **kw)
    with pytest.raises(DataError, match="rank"):
        HostLoader(d.images, d.labels, rank=2, world_size=2, **kw)
    with pytest.raises(DataError, match="one per channel"):
        HostLoader(d.images, d.labels, **{**kw, "mean": (0.5, 0.5, 0.5)})
    with pytest.raises(DataError, match="unknown loader 'gpu'; allowed: auto, device, host"):
        choose_loader("gpu", 1, "cpu")
    for nbytes in (-1, 1.0, None):
        with pytest.raises(DataError, match="images_nbytes"):
            choose_loader("auto", nbytes, "cpu")
    with pytest.raises(DataError, match="resolve 'auto' with choose_loader first"):
        digits.train_loader(32, "cpu", seed=0, loader="auto")
    with pytest.raises(DataError, match="unknown loader 'disk'; allowed: device, host"):
        digits.train_loader(32, "cpu", seed=0, loader="disk")


@pytest.mark.slow  # trains, with worker processes
def test_training_through_the_host_loader_equals_the_device_loader(tmp_path):
    """Two real quickstart runs, one per loader kind: identical batches give identical weights."""
    import torch

    from edgekd.training.run_dir import run_distill
    from edgekd.recipe import load_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes/quickstart.yaml"
    summaries = {}
    for kind in ("device", "host"):
        r = load_recipe(recipe, ["train.epochs=2", "data.image_size=16", f"data.loader={kind}", "data.workers=2"])
        summaries[kind] = run_distill(r, tmp_path / kind, resume=False)
        assert summaries[kind]["loader"] == kind
    for role in ("teacher", "student"):
        assert summaries["device"][role]["accuracy"] == summaries["host"][role]["accuracy"]
        assert summaries["device"][role]["nll"] == summaries["host"][role]["nll"]
    a = torch.load(tmp_path / "device" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "host" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
