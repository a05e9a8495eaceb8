"""data.augment.crop: resized — torchvision-style random-resized crops on the uint8 batch.

Checked against torch's own float bilinear resize of the same boxes, for the box
distribution torchvision's RandomResizedCrop.get_params describes, and for the
same bytes on both loader paths and for a seed.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop

from edgekd.data.crop import CROP_RATIO, CROP_SCALE, crop_range_problem
from edgekd.data.augment import resized_crop_boxes
from edgekd.data.loader import DeviceLoader, HostLoader
from edgekd.errors import DataError
from edgekd.recipe import AugmentConfig

SIZE = 40


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    # Noise: neighbouring pixels differ by up to 255, the worst case for interpolation error.
    return np.random.default_rng(0).integers(0, 256, (300, SIZE, SIZE, 3), dtype=np.uint8)


def _kw(**over):
    kw = dict(batch_size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), device="cpu", shuffle=True, augment=True,
              seed=3, crop="resized", crop_scale=(0.2, 1.0))  # fmt: skip
    return {**kw, **over}


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_each_image_is_its_box_bilinearly_resized_and_maybe_flipped(images):
    loader = DeviceLoader(images, np.arange(len(images)), **_kw())
    order, oy, ox, flip, ch, cw = loader.plan.draws(1)
    assert (ch < SIZE).any() and (cw < SIZE).any() and flip.any() and not flip.all()
    checked = 0
    for i, (x, y) in enumerate(_epoch(loader, 1)):
        u = torch.round(x * 255).to(torch.uint8)
        for j, k in enumerate(range(*loader.plan.batch_slice(i).indices(len(order)))):
            assert int(y[j]) == int(order[k])
            src = torch.from_numpy(images[int(order[k])]).permute(2, 0, 1)[None].double()
            box = src[:, :, oy[k] : oy[k] + ch[k], ox[k] : ox[k] + cw[k]]
            want = F.interpolate(box, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
            if flip[k]:
                want = want.flip(2)
            assert (u[j].double() - want).abs().max() <= 1.0
            checked += 1
    assert checked == len(images)


def test_boxes_follow_the_scale_and_ratio_ranges():
    g = torch.Generator().manual_seed(0)
    n = 20000
    top, left, h, w = resized_crop_boxes(g, n, 96, 96, (0.25, 1.0), (3 / 4, 4 / 3))
    area = (h * w).double() / 96**2
    ratio = w.double() / h.double()
    # Rounding h and w to whole pixels moves area and ratio a little past the ranges.
    assert area.min() > 0.24 and area.max() <= 1.0
    assert ratio.min() > 0.73 and ratio.max() < 1.37
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 96).all() and (left + w <= 96).all()
    # The same distribution as torchvision's own get_params (tries that do not fit are
    # dropped, which favours smaller boxes than a uniform share would give).
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, 96, 96), [0.25, 1.0], [3 / 4, 4 / 3])
                        for _ in range(4000)], dtype=torch.float64)  # fmt: skip
    ref_area, ref_ratio = ref[:, 2] * ref[:, 3] / 96**2, ref[:, 3] / ref[:, 2]
    assert abs(area.mean().item() - ref_area.mean().item()) < 0.012
    assert abs(area.std().item() - ref_area.std().item()) < 0.012
    assert abs(torch.log(ratio).mean().item()) < 0.01 and abs(torch.log(ref_ratio).mean().item()) < 0.02
    assert abs(torch.log(ratio).std().item() - torch.log(ref_ratio).std().item()) < 0.01
    # Positions are uniform over where the box fits: the centre of mass of offsets is in the middle.
    free = (96 - h).double()
    assert abs((top.double() / free.clamp(min=1))[free > 0].mean().item() - 0.5) < 0.02


def test_a_box_that_never_fits_falls_back_to_the_centre_crop():
    g = torch.Generator().manual_seed(0)
    # Aspect ratios of 3..4 on a square image with area share ~1 never fit.
    top, left, h, w = resized_crop_boxes(g, 50, 32, 32, (0.99, 1.0), (3.0, 4.0))
    assert (w == 32).all() and (h == round(32 / 3.0)).all()
    assert (top == (32 - h) // 2).all() and (left == 0).all()


def test_both_loader_paths_give_the_same_bytes_and_a_seed_fixes_them(images):
    ids = np.arange(len(images))
    device = DeviceLoader(images, ids, **_kw())
    host = HostLoader(images, ids, workers=0, **_kw())
    again = DeviceLoader(images, ids, **_kw())
    other_seed = DeviceLoader(images, ids, **_kw(seed=4))
    for epoch in (0, 2):
        want = _epoch(device, epoch)
        for (xd, yd), (xh, yh), (xa, ya) in zip(want, _epoch(host, epoch), _epoch(again, epoch)):
            assert torch.equal(xd, xh) and torch.equal(yd, yh) and torch.equal(xd, xa) and torch.equal(yd, ya)
    assert not torch.equal(_epoch(other_seed, 0)[0][0], _epoch(device, 0)[0][0])


def test_the_pad_crop_draws_are_unchanged_by_the_resized_option(images):
    """crop: pad (the default) consumes the epoch's random stream exactly as before crop: resized existed."""
    plan = DeviceLoader(images, np.arange(len(images)), **_kw(crop="pad", crop_scale=(0.08, 1.0), crop_padding=4)).plan
    order, oy, ox, flip, ch, cw = plan.draws(5)
    from edgekd.data.loader import _epoch_generator

    g = _epoch_generator(plan.seed, 5)
    assert torch.equal(order, torch.randperm(plan.n, generator=g))
    assert torch.equal(oy, torch.randint(0, 9, (plan.n,), generator=g))
    assert torch.equal(ox, torch.randint(0, 9, (plan.n,), generator=g))
    assert torch.equal(flip, torch.rand(plan.n, generator=g) < 0.5)
    assert (ch == SIZE).all() and (cw == SIZE).all()


def test_bad_crop_arguments_are_data_errors(images):
    with pytest.raises(DataError, match="unknown crop 'random'"):
        DeviceLoader(images, np.arange(len(images)), **_kw(crop="random"))
    with pytest.raises(DataError, match="crop_scale"):
        DeviceLoader(images, np.arange(len(images)), **_kw(crop_scale=(0.5, 0.2)))


@pytest.mark.parametrize("scale, ratio", [((0.5, 0.2), (3 / 4, 4 / 3)), ((0.0, 1.0), (1.0, 1.0)),
                                          ((0.08, 1.0), (1.0, math.inf)), ((0.08, 1.0), (4 / 3, 3 / 4))])
def test_the_recipe_and_the_loader_refuse_a_crop_range_with_one_check(images, scale, ratio):
    problem = crop_range_problem(scale, ratio)
    assert problem is not None
    with pytest.raises(DataError) as e:
        DeviceLoader(images, np.arange(len(images)), **_kw(crop_scale=scale, crop_ratio=ratio))
    assert str(e.value) == problem
    with pytest.raises(ValueError, match=re.escape(problem)):
        AugmentConfig(crop="resized", crop_scale=scale, crop_ratio=ratio)


def test_the_recipe_and_the_loader_share_the_crop_defaults(images):
    plan = DeviceLoader(images, np.arange(len(images)), **_kw(crop_scale=CROP_SCALE)).plan
    assert AugmentConfig().crop_scale == plan.crop_scale == CROP_SCALE == (0.08, 1.0)
    assert AugmentConfig().crop_ratio == plan.crop_ratio == CROP_RATIO == (3 / 4, 4 / 3)


def test_full_scale_square_boxes_give_the_image_back(images):
    """scale [1, 1] and ratio [1, 1]: every box is the whole image, so only flips change it."""
    loader = DeviceLoader(images, np.arange(len(images)), **_kw(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)))
    order, _, _, flip, _, _ = loader.plan.draws(0)
    x, y = _epoch(loader, 0)[0]
    u = torch.round(x * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for j in range(len(y)):
        want = images[int(y[j])][:, ::-1] if flip[j] else images[int(y[j])]
        assert np.array_equal(u[j], want)
    assert math.isclose(float(flip[: len(y)].float().mean()), 0.5, abs_tol=0.2)
