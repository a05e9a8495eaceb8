"""data.storage: stream: image files decoded per batch in DataLoader workers. The split and the epoch
plan are the in-memory path's, crops come from the full-resolution file, evaluation is what
`edgekd validate` computes, bad files and settings are one line, and torchrun ranks (one node or
two, on loopback) read disjoint shares and train like one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _training import training_fixture
from PIL import Image

from edgekd.data import build_data, resolve_storage
from edgekd.data.files import scan_files, storage_for
from edgekd.data.augment import boxes_from_variates, crop_variates, resized_crop_boxes
from edgekd.data.preprocess import centre_crop_array, normalize, preprocessing_spec
from edgekd.data.split import load_split_images
from edgekd.data.stream import INDEX_LOG_ENV, StreamLoader
from edgekd.errors import DataError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes/quickstart.yaml")
PLAIN_CNN = str(REPO / "tests/_plain_cnn.py")


def write_folder(root: Path, per_class: int = 24, classes: int = 4, seed: int = 0) -> Path:
    """Photos of their own sizes (20-60 px, not square), PNG and JPEG, a colour per class."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(20, 61, size=2))
            base = np.array([60 * c, 255 - 60 * c, 128], dtype=np.float64)
            img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(img).save(root / f"class{c}" / f"{i:03d}.{ext}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("photos") / "data")


def stream_data(root, **kw):
    args = dict(image_size=24, val_fraction=0.25, val_size=None, tune_fraction=0.0, tune_size=None,
                test_fraction=0.0, test_size=None, split_seed=3)
    return build_data("imagefolder", str(root), **{**args, **kw})


def test_the_split_is_the_in_memory_split(folder):
    memory, stream = stream_data(folder, storage="memory"), stream_data(folder, storage="stream")
    assert stream.split_info.fingerprint == memory.split_info.fingerprint
    assert np.array_equal(stream.train.labels, memory.train.labels)
    assert np.array_equal(stream.val.labels, memory.val.labels)
    assert stream.split_info.storage == "stream" and "storage" not in memory.split_info.to_dict()
    assert stream.preprocessing()["resize_mode"] == "centre_crop" and "resize_mode" not in memory.preprocessing()


def test_evaluation_is_torchvisions_resize_and_centre_crop():
    """The torch-free eval preparation equals torchvision v2 Resize(floor(S / 0.875)) + CenterCrop(S) on PIL."""
    from torchvision.transforms import v2

    rng = np.random.default_rng(1)
    for h, w in [(37, 53), (60, 21), (24, 24), (100, 99)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        expected = np.asarray(v2.CenterCrop(24)(v2.Resize(27, antialias=True)(img)))
        assert np.array_equal(centre_crop_array(img, 24, "RGB"), expected), (h, w)


def test_per_image_boxes_are_torchvisions_draws_image_by_image():
    """One draw of variates turned into boxes for images of their own sizes = each image's own boxes."""
    sizes = [(37, 53), (60, 21), (24, 24), (20, 200)]
    g = torch.Generator().manual_seed(5)
    variates = crop_variates(g, len(sizes))
    top, left, h, w = boxes_from_variates(variates, torch.tensor([s[0] for s in sizes]),
                                          torch.tensor([s[1] for s in sizes]), (0.08, 1.0), (3 / 4, 4 / 3))
    for k, (hh, ww) in enumerate(sizes):
        one = tuple(v[k : k + 1] for v in variates)
        assert [int(t[0]) for t in boxes_from_variates(one, hh, ww, (0.08, 1.0), (3 / 4, 4 / 3))] == \
            [int(top[k]), int(left[k]), int(h[k]), int(w[k])]
        assert 0 <= top[k] and top[k] + h[k] <= hh and 0 <= left[k] and left[k] + w[k] <= ww
    # The in-memory path's boxes come from the same variates: one generator, the same numbers.
    a = resized_crop_boxes(torch.Generator().manual_seed(5), 4, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3))
    b = boxes_from_variates(crop_variates(torch.Generator().manual_seed(5), 4), 32, 32, (0.08, 1.0), (3 / 4, 4 / 3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def loader(data, workers=0, **kw):
    args = dict(batch_size=16, mean=data.mean, std=data.std, device="cpu", shuffle=True, augment=True,
                crop="resized", seed=7, workers=workers)
    return StreamLoader(data.train, data.preprocessing(), **{**args, **kw})


def epoch(ld, e):
    ld.set_epoch(e)
    return [(x.clone(), y.clone()) for x, y in ld]


def test_batches_depend_only_on_seed_and_epoch_not_on_workers(folder):
    data = stream_data(folder, storage="stream")
    inline, forked = loader(data, workers=0), loader(data, workers=2)
    first = epoch(inline, 0)
    for (a, y), (b, z) in zip(first, epoch(forked, 0)):
        assert torch.equal(a, b) and torch.equal(y, z)
    assert not torch.equal(first[0][0], epoch(inline, 1)[0][0])
    again = epoch(inline, 0)  # after epoch 1: what a resumed run sees
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, again))
    assert sum(len(y) for _, y in first) == len(data.train)


def test_a_crop_of_the_whole_photo_is_the_photo_resized(folder):
    """scale (1, 1) and every ratio allowed: each crop is the whole full-resolution file, resized once
    (not a crop of a copy shrunk in advance), then flipped or not."""
    from torchvision.transforms.v2 import functional as TF

    data = stream_data(folder, storage="stream")
    ld = loader(data, crop_scale=(1.0, 1.0), crop_ratio=(0.1, 10.0), shuffle=False)
    x, _ = next(iter(ld))
    order, _, flip = ld.plan.stream_draws(0)
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    for k in range(4):
        img = data.train.open(int(order[k]), "RGB")
        want = TF.resize(img, [24, 24], antialias=True)
        want = TF.horizontal_flip(want) if bool(flip[k]) else want
        want = torch.from_numpy(np.array(want)).permute(2, 0, 1)[None]
        assert torch.equal(x[k : k + 1], (want.float() / 255 - mean) / std)


def test_training_evaluation_is_what_validate_computes(folder):
    data = stream_data(folder, storage="stream")
    ev = data.eval_loader("val", 10, "cpu", workers=0)
    xs = torch.cat([x for x, _ in ev]).numpy()
    rebuilt = load_split_images(data.split_info, "val")  # the torch-free path validate and export use
    assert np.array_equal(xs, normalize(rebuilt.images, data.mean, data.std))


def test_ranks_read_disjoint_shares_with_distributed_sampler_padding(folder, tmp_path, monkeypatch):
    monkeypatch.setenv(INDEX_LOG_ENV, str(tmp_path))
    data = stream_data(folder, storage="stream")  # 72 training images
    for rank in (0, 1, 2):
        epoch(loader(data, rank=rank, world_size=3, batch_size=8), 0)
    seen = [[int(v) for line in (tmp_path / f"index-rank{r}.log").read_text().splitlines() for v in line.split()[2:]]
            for r in range(3)]
    assert all(len(s) == 24 for s in seen) and sorted(sum(seen, [])) == list(range(72))


def test_bad_files_and_settings_are_one_line(folder, tmp_path):
    broken = write_folder(tmp_path / "broken", per_class=4, classes=2)
    jpg = sorted((broken / "class1").glob("*.jpg"))[0]
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated
    files, spec = scan_files(broken), preprocessing_spec(24, (0.5,) * 3, (0.25,) * 3, 3, "centre_crop")
    for workers in (0, 2):
        ld = StreamLoader(files, spec, batch_size=3, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu", shuffle=True,
                          augment=True, workers=workers)
        with pytest.raises(DataError, match=rf"^cannot decode image {jpg}: .*remove or replace the file"):
            epoch(ld, 0)
    with pytest.raises(DataError, match=rf"^cannot decode image {jpg}"):  # or when the stats sample meets it
        stream_data(broken, storage="stream")
    with pytest.raises(DataError, match=r"^data.workers 999 is more than the \d+ CPUs"):
        loader(stream_data(folder, storage="stream"), workers=999)
    with pytest.raises(DataError, match="gets no batch"):
        loader(stream_data(folder, storage="stream"), batch_size=100, drop_last=True)
    with pytest.raises(DataError, match=r"^data.storage stream reads image files"):
        build_data("digits", None, image_size=16, val_fraction=0.2, val_size=None, storage="stream")


def test_auto_streams_what_would_not_fit(folder):
    assert storage_for(10, None) == "memory"
    # The in-memory path's peak holds 3 copies of the decoded images; auto gives it half the memory.
    assert storage_for(167, 1000) == "stream" and storage_for(166, 1000) == "memory"
    assert resolve_storage("auto", "cifar10", None, 32, 3)[0] == "memory"
    assert resolve_storage("stream", "imagefolder", str(folder), 32, 3) == ("stream", "set in the recipe", None)
    choice, why, scanned = resolve_storage("auto", "imagefolder", str(folder), 32, 3)
    assert choice == "memory" and "96 images at 32 px" in why
    assert len(scan_files(folder)) == len(scanned) == 96


def test_the_folder_auto_scanned_is_not_scanned_again(folder, monkeypatch):
    """build_data(storage="stream", files=resolve_storage's scan) streams the same files without a
    second walk of the folder (minutes on millions of files)."""
    import edgekd.data as data

    _, _, scanned = resolve_storage("auto", "imagefolder", str(folder), 32, 3)
    walks = []
    monkeypatch.setattr(data, "scan_files", lambda root: walks.append(root) or scan_files(root))
    reused = data.build_data("imagefolder", str(folder), image_size=16, val_fraction=0.25, val_size=None,
                             storage="stream", files=scanned)
    assert walks == []
    again = data.build_data("imagefolder", str(folder), image_size=16, val_fraction=0.25, val_size=None, storage="stream")
    assert len(walks) == 1
    assert list(reused.train.paths) == list(again.train.paths) and reused.split_info == again.split_info


def run(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def streamed(root, *extra):
    return ("--quiet", "--set", "data.name=imagefolder", "--set", f"data.root={root}", "--set", "data.storage=stream",
            "--set", "data.image_size=16", "--set", "data.workers=1", "--set", "data.batch_size=16", *extra)


def resized_crop_recipe(path: Path) -> str:
    """The quickstart with random-resized crops (its crop_padding belongs to crop: pad)."""
    import yaml

    recipe = yaml.safe_load(Path(QUICKSTART).read_text())
    recipe["data"]["augment"] = {"crop": "resized", "hflip": True}
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.mark.slow
def test_a_streamed_run_distils_resumes_exactly_exports_and_validates(tmp_path):
    from _runs import canonical

    root = write_folder(tmp_path / "data", per_class=24, classes=4)
    args = streamed(root, "--set", "train.epochs=3")
    ref, victim, bundle = tmp_path / "ref", tmp_path / "victim", tmp_path / "bundle"
    recipe = resized_crop_recipe(tmp_path / "recipe.yaml")
    res = run("-m", "edgekd", "distill", recipe, "--out", str(ref), *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((ref / "summary.json").read_text())["loader"] == "stream"
    killed = run("-m", "edgekd", "distill", recipe, "--out", str(victim), *args, env={"EDGEKD_KILL_AT": "step:9"})
    assert killed.returncode == -9
    res = run("-m", "edgekd", "distill", recipe, "--out", str(victim), *args, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert canonical(victim) == canonical(ref)
    res = run("-m", "edgekd", "export", str(ref), "--out", str(bundle), "--formats", "fp32")
    assert res.returncode == 0, res.stderr[-3000:]
    res = run("-m", "edgekd", "validate", str(bundle), "--max-ece", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    # validate rebuilt the val split from the files and scored the fp32 file as training scored the net
    student = json.loads((ref / "summary.json").read_text())["student"]
    report = json.loads((bundle / "manifest.json").read_text())["reference"]
    assert abs(report["accuracy"] - student["accuracy"]) < 1e-9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One process vs two ranks on the same global batch compute the same training only without BatchNorm
# and augmentation and in fp32 (see test_distributed.py's EQUIVALENT, whose reasons hold here).
EQUIVALENT = ("--set", "train.epochs=2", "--set", "train.device=cpu", "--set", "train.amp=off",
              "--set", "data.batch_size=32", "--set", "data.augment.crop_padding=0",
              "--set", "data.augment.hflip=false", "--set", "distill.weighting=soft",
              "--set", "teacher.arch=plain_cnn_test", "--set", "teacher.options.width=16",
              "--set", "student.arch=plain_cnn_test", "--set", "optim.warmup_epochs=0")


@training_fixture()
def one_process(tmp_path_factory):
    base = tmp_path_factory.mktemp("nodes")
    root = write_folder(base / "data", per_class=40, classes=4)  # 128 training images = 4 global batches
    out, init = base / "one", base / "init"
    init.mkdir()
    res = run(PLAIN_CNN, "distill", QUICKSTART, "--out", str(out), *streamed(root, *EQUIVALENT),
              "--set", "data.val_size=32", env={"PYTHONPATH": str(REPO), "PLAIN_CNN_SAVE_INIT": str(init)})
    assert res.returncode == 0, res.stderr[-3000:]
    return root, out, init


@pytest.mark.slow
def test_two_nodes_on_loopback_train_like_one_process_and_read_disjoint_halves(one_process, tmp_path):
    root, one, init = one_process
    two, logs = tmp_path / "two", tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), INDEX_LOG_ENV: str(logs)}
    # What a user types on each of two machines, with the first one's address; here both are 127.0.0.1.
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "edgekd-test",
            PLAIN_CNN, "distill", QUICKSTART, "--out", str(two), *streamed(root, *EQUIVALENT),
            "--set", "data.val_size=32"]
    procs = [subprocess.Popen(node, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    a, b = (torch.load(r / "last.pt", weights_only=True) for r in (one, two))
    assert isinstance(b["rng"], list) and len(b["rng"]) == 2  # really 2 processes
    for net, width in (("teacher", 16), ("student", 8)):
        start = torch.load(init / f"init_w{width}.pt", weights_only=True)
        for k in a[net]:
            torch.testing.assert_close(b[net][k], a[net][k], rtol=0, atol=1e-5, msg=f"{net} {k}")
        assert max(float((a[net][k] - start[k]).abs().max()) for k in start) > 1e-2, net
    for e in (0, 1):
        halves = [[int(v) for line in (logs / f"index-rank{r}.log").read_text().splitlines()
                   if line.split()[0] == str(e) for v in line.split()[2:]] for r in (0, 1)]
        assert len(halves[0]) == len(halves[1]) == 64 and sorted(halves[0] + halves[1]) == list(range(128)), e
