"""student.init / teacher.init: backbone — pretrained files into edgekd nets.

Every file is made here (nothing can be downloaded): torchvision's own models with
1000 classes, saved with torch.save(state_dict) as torchvision ships its ImageNet
weights, and edgekd's own checkpoint formats. The refusals through the CLI are in
test_bad_input.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from PIL import Image

from edgekd.cli import main

from edgekd.training import checkpoint as ckpt
from edgekd.errors import CheckpointError, ModelError
from edgekd.models import build_model
from edgekd.models.pretrained import MIN_BACKBONE_SHARE, find_classifier, init_weights

REPO = Path(__file__).resolve().parents[1]


def _save_torchvision(tmp_path, name: str, **kw):
    torch.manual_seed(123)  # not the student's seed: file and fresh init must differ
    state = getattr(tvm, name)(num_classes=1000, **kw).state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    return path, state


def _fresh(arch: str, image_size: int, num_classes: int = 10):
    torch.manual_seed(0)
    return build_model(arch, num_classes, 3, image_size)


def test_a_1000_class_torchvision_mobilenet_v2_file_starts_a_10_class_student(tmp_path):
    path, saved = _save_torchvision(tmp_path, "mobilenet_v2")
    model, untouched = _fresh("mobilenet_v2", 96), _fresh("mobilenet_v2", 96)
    report = init_weights(model, ckpt.load_net_weights(path, "student"), "backbone", str(path), num_classes=10)

    got = model.state_dict()
    head = {"classifier.1.weight", "classifier.1.bias"}
    assert set(report.loaded) == set(got) - head and len(report.loaded) == 312
    for name in report.loaded:  # every other tensor, BatchNorm statistics included, is the file's
        assert torch.equal(got[name], saved[name]), name
    # The classifier is the fresh one build_model gave for this seed, not a slice of the file's.
    for name in head:
        assert torch.equal(got[name], untouched.state_dict()[name])
    assert not torch.equal(got["classifier.1.weight"], saved["classifier.1.weight"][:10])
    assert report.classifier == "classifier.1" and report.classifier_reinitialised
    assert report.backbone_share == 1.0 and report.unused == ()

    loaded, fresh = report.lines("student")
    assert loaded == (f"student.init backbone from {path}: loaded 312 of 314 tensors, 100.0% of the 2,223,872 "
                      f"parameters outside the classifier")  # fmt: skip
    assert fresh.startswith("student.init backbone: not loaded: 2 freshly initialised (the classifier: class count differs): "
                            "classifier.1.weight (file [1000, 1280], model [10, 1280]), classifier.1.bias")  # fmt: skip
    assert fresh.endswith("; 0 file tensors unused")
    assert model(torch.zeros(2, 3, 96, 96)).shape == (2, 10)


def _without_batch_counters(state: dict) -> dict:
    """A state_dict as PyTorch before 0.4.1 saved it (torchvision's older ImageNet files): no num_batches_tracked."""
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def test_a_file_without_batchnorm_counters_loads_in_both_modes(tmp_path):
    torch.manual_seed(123)
    old = _without_batch_counters(tvm.mobilenet_v2(num_classes=1000).state_dict())
    assert len(old) == 314 - 52  # mobilenet_v2 has 52 BatchNorms
    torch.save(old, tmp_path / "old.pth")
    model = _fresh("mobilenet_v2", 96)
    counters = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    report = init_weights(model, ckpt.load_net_weights(tmp_path / "old.pth"), "backbone", "old.pth", num_classes=10)
    # Only the classifier is fresh (the counters are not 52 "freshly initialised" tensors burying it) ...
    assert [n for n, _ in report.fresh] == ["classifier.1.weight", "classifier.1.bias"]
    assert len(report.loaded) == 312 and report.backbone_share == 1.0
    assert report.lines("student")[1].startswith("student.init backbone: not loaded: 2 freshly initialised (the "
                                                 "classifier: class count differs): classifier.1.weight")
    # ... and the counters keep the model's own values, as torch's loading leaves them.
    assert all(torch.equal(model.state_dict()[k], v) for k, v in counters.items())
    # init: full takes such a file whole (here one with the student's 10 classes).
    torch.manual_seed(7)
    ten = build_model("mobilenet_v2", 10, 3, 96)
    torch.save(_without_batch_counters(ten.state_dict()), tmp_path / "old10.pth")
    full = _fresh("mobilenet_v2", 96)
    assert init_weights(full, ckpt.load_net_weights(tmp_path / "old10.pth"), "full", "old10.pth", 10) is None
    assert all(torch.equal(v, ten.state_dict()[k]) for k, v in full.state_dict().items()
               if not k.endswith("num_batches_tracked"))


@pytest.mark.slow  # two resnet18s and a 45 MB file per case
@pytest.mark.parametrize("image_size, stem_loaded", [(32, False), (96, True)])
def test_resnet18_small_input_stem_is_reinitialised_and_reported(tmp_path, image_size, stem_loaded):
    """At <= 64 px resnet's 7x7 conv1 becomes a 3x3 conv: it cannot take the file's tensor and says so."""
    path, saved = _save_torchvision(tmp_path, "resnet18")
    model, untouched = _fresh("resnet18", image_size), _fresh("resnet18", image_size)
    report = init_weights(model, ckpt.load_net_weights(path, "teacher"), "backbone", str(path), num_classes=10)
    conv1 = model.state_dict()["conv1.weight"]
    if stem_loaded:
        assert torch.equal(conv1, saved["conv1.weight"])
        assert [n for n, _ in report.fresh] == ["fc.weight", "fc.bias"]
    else:
        assert conv1.shape == (64, 3, 3, 3) and torch.equal(conv1, untouched.state_dict()["conv1.weight"])
        assert report.fresh[0] == ("conv1.weight", "file [64, 3, 7, 7], model [64, 3, 3, 3]")
        assert report.share_text() == "99.9%"  # 1,728 of 11.2M parameters left out: never shown as 100%
        assert "conv1.weight (file [64, 3, 7, 7], model [64, 3, 3, 3])" in report.lines("teacher")[1]
    assert torch.equal(model.state_dict()["layer4.1.bn2.running_var"], saved["layer4.1.bn2.running_var"])


def test_wrapper_prefixes_and_edgekd_checkpoints_load(tmp_path):
    """A file saved from a DDP / torch.compile wrapper, and the student of an edgekd last.pt."""
    torch.manual_seed(5)
    src = build_model("resnet8", 7, 3, 32)
    wrapped = {f"_orig_mod.module.{k}": v for k, v in src.state_dict().items()}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    ckpt.save_training_state(tmp_path / "last.pt", {"student": src.state_dict(),
                                                    "teacher": build_model("cnn_small", 7, 3, 32).state_dict()})
    for file, role in (("wrapped.pt", "student"), ("last.pt", "student")):
        model = _fresh("resnet8", 32, num_classes=7)
        report = init_weights(model, ckpt.load_net_weights(tmp_path / file, role), "backbone", file, num_classes=7)
        assert report.fresh == () and not report.classifier_reinitialised  # same classes: the classifier loads too
        assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())
        assert report.lines("student")[1] == "student.init backbone: nothing left freshly initialised, no unused tensor in the file"
    # init: full reads the same files strictly.
    model = _fresh("resnet8", 32, num_classes=7)
    assert init_weights(model, ckpt.load_net_weights(tmp_path / "last.pt", "student"), "full", "last.pt", 7) is None
    assert torch.equal(model.fc.weight, src.fc.weight)


def test_full_refuses_a_file_with_another_class_count_and_names_backbone(tmp_path):
    path, _ = _save_torchvision(tmp_path, "mobilenet_v2")
    with pytest.raises(CheckpointError, match=r"classifier\.1\.weight: checkpoint \[1000, 1280\] vs model \[10, 1280\].*"
                                              r"init: backbone loads only the tensors that fit"):
        init_weights(_fresh("mobilenet_v2", 96), ckpt.load_net_weights(path), "full", str(path), 10)


def test_backbone_refuses_files_that_mostly_do_not_fit(tmp_path):
    half, _ = _save_torchvision(tmp_path, "mobilenet_v2", width_mult=0.5)
    other, _ = _save_torchvision(tmp_path, "shufflenet_v2_x0_5")
    model = _fresh("mobilenet_v2", 96)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"fills 0\.\d% of the parameters outside the classifier, at least 50% "
                                              r"needed; e\.g\. 'features\.0\.0\.weight' file \[16, 3, 3, 3\], model \[32"):
        init_weights(model, ckpt.load_net_weights(half), "backbone", str(half), 10)
    with pytest.raises(CheckpointError, match=r"fills 0\.0% .* 'features\.0\.0\.weight' not in the file; the file has "
                                              r"e\.g\. 'conv1\.0\.weight'"):
        init_weights(model, ckpt.load_net_weights(other), "backbone", str(other), 10)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # refused before any copy
    assert MIN_BACKBONE_SHARE == 0.5  # the share README and pretrained.py state


def test_the_classifier_is_the_last_linear_layer_or_backbone_is_refused():
    assert find_classifier(_fresh("mobilenet_v3_small", 32), 10) == "classifier.3"
    assert find_classifier(_fresh("wrn_16_2", 32), 10) == "fc"
    conv_head = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 10, 1), torch.nn.AdaptiveAvgPool2d(1),
                                    torch.nn.Flatten())  # fmt: skip
    with pytest.raises(ModelError, match=r"last layer '1' is a Conv2d, not an nn\.Linear with 10 outputs"):
        find_classifier(conv_head, 10)
    with pytest.raises(ModelError, match=r"nn\.Linear with 10 outputs, not an nn\.Linear with 7 outputs"):
        find_classifier(_fresh("resnet8", 32), 7)


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains mobilenet_v2 + resnet18 at 96 px for one epoch on 30 photos
def test_finetune_recipe_runs_end_to_end_on_stand_in_files(tmp_path, monkeypatch, capfd):
    """recipes/finetune-imagefolder.yaml as shipped (photos/ under the working folder), with the
    stand-in pretrained files benchmarks/make_finetune_inputs.py writes."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "fox"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(10):  # 4:3 photos, squeezed to 96x96 when loaded
            Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / "photos" / c / f"{i}.jpg")
    student_file, teacher_file = _load_script("make_finetune_inputs").make(tmp_path / "pre", 3, 96, seed=0)
    run = tmp_path / "run"
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["distill", str(REPO / "recipes/finetune-imagefolder.yaml"), "--set", f"student.checkpoint={student_file}",
              "--set", f"teacher.checkpoint={teacher_file}", "--set", "train.epochs=1", "--set", "data.batch_size=8",
              "--out", str(run), "--quiet"])  # fmt: skip
    out, err = capfd.readouterr()
    assert e.value.code == 0, err[-2000:]
    lines = out.splitlines()
    assert lines.pop(0).startswith("speed settings: channels_last on (auto: faster on ")
    assert lines[0] == (f"student.init backbone from {student_file}: loaded 312 of 314 tensors, 100.0% of the "
                        f"2,223,872 parameters outside the classifier")  # fmt: skip
    assert lines[1].startswith("student.init backbone: not loaded: 2 freshly initialised (the classifier: class count "
                               "differs): classifier.1.weight (file [1000, 1280], model [3, 1280])")  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["student"]["init"]["classifier_reinitialised"] is True
    assert summary["student"]["init"]["tensors_fresh"] == ["classifier.1.weight", "classifier.1.bias"]
    assert "init" not in summary["teacher"]  # init: full loads everything or fails
    assert summary["split"]["image_size"] == 96 and summary["split"]["sizes"]["train"] == 27
