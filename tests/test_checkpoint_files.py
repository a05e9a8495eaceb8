"""teacher.checkpoint / student.checkpoint: the files users have, and the ones that must be refused.

Every file is written here by the library that writes it in the wild (torch, torchvision's
optimizers and schedulers, Lightning's Trainer) or, where the writer is a script rather than a
package (torchvision's reference scripts, timm's train script), with the same structure as that
script's torch.save call. The nets are built as `edgekd distill` builds them (distill.nets,
before any image is read), so these tests need no data.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from edgekd.data.sources import SourceShape
from edgekd.training import checkpoint as ckpt
from edgekd.training.nets import build_nets
from edgekd.errors import CheckpointError, Problems, RecipeError
from edgekd.models import build_model
from edgekd.recipe import build_recipe

REPO = Path(__file__).resolve().parents[1]
SHAPE = SourceShape(num_classes=10, in_channels=1, image_size=32)  # digits


def recipe(**teacher):
    return build_recipe({"data": {"name": "digits"}, "teacher": {"arch": "cnn_small", **teacher},
                         "student": {"arch": "cnn_tiny"}, "distill": {"method": "dml"}, "train": {"epochs": 1}})


def trained_net(seed: int = 7) -> nn.Module:
    torch.manual_seed(seed)
    net = build_model("cnn_small", SHAPE.num_classes, SHAPE.in_channels, SHAPE.image_size)
    with torch.no_grad():  # not the fresh init build_nets draws: loading must be visible
        for p in net.parameters():
            p.add_(0.01)
    return net


def assert_loaded(teacher: nn.Module, source: nn.Module) -> None:
    expected = source.state_dict()
    got = teacher.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in got)


def an_optimizer_step(net: nn.Module):
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    net(torch.randn(2, SHAPE.in_channels, SHAPE.image_size, SHAPE.image_size)).sum().backward()
    opt.step()
    sched.step()
    return opt, sched


def test_torchvision_reference_script_checkpoint(tmp_path):
    """references/classification/train.py: {"model", "optimizer", "lr_scheduler", "epoch", "args"
    (its argparse.Namespace), "model_ema"}: the weights are under "model"."""
    net = trained_net()
    opt, sched = an_optimizer_step(net)
    ema = torch.optim.swa_utils.AveragedModel(net)
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                "epoch": 89, "args": argparse.Namespace(model="cnn_small", lr=0.5, epochs=90, weights=None),
                "model_ema": ema.state_dict()}, tmp_path / "checkpoint.pth")
    nets = build_nets(recipe(checkpoint=str(tmp_path / "checkpoint.pth")), SHAPE)
    assert_loaded(nets.teacher, net)
    weights = ckpt.read_net_weights(tmp_path / "checkpoint.pth")
    assert weights.where == "its 'model' entry" and "args" in weights.top_keys
    # The EMA weights are there too, for who wants them (AveragedModel keeps the net as module.*).
    nets = build_nets(recipe(checkpoint=str(tmp_path / "checkpoint.pth"), checkpoint_key="model_ema"), SHAPE)
    assert_loaded(nets.teacher, net)


def test_timm_train_script_checkpoint(tmp_path):
    """timm's CheckpointSaver: {"epoch", "arch", "state_dict", "optimizer", "version", "args", "metric"}."""
    net = trained_net()
    opt, _ = an_optimizer_step(net)
    torch.save({"epoch": 3, "arch": "cnn_small", "state_dict": net.state_dict(), "optimizer": opt.state_dict(),
                "version": 2, "args": argparse.Namespace(model="cnn_small", lr=0.1), "metric": 71.3},
               tmp_path / "last.pth.tar")
    assert_loaded(build_nets(recipe(checkpoint=str(tmp_path / "last.pth.tar")), SHAPE).teacher, net)


def test_plain_state_dict_and_wrapper_prefixes(tmp_path):
    """torch.save(model.state_dict()) (torchvision's and timm's weight files), from DDP and torch.compile."""
    net = trained_net()
    for name, state in (("plain.pt", net.state_dict()),
                        ("ddp.pt", {f"module.{k}": v for k, v in net.state_dict().items()}),
                        ("compiled-ddp.pt", {f"_orig_mod.module.{k}": v for k, v in net.state_dict().items()})):
        torch.save(state, tmp_path / name)
        assert_loaded(build_nets(recipe(checkpoint=str(tmp_path / name)), SHAPE).teacher, net)


class Classifier:
    """A LightningModule holding the net as self.model (the usual pattern), and a loss module."""

    @staticmethod
    def make(net: nn.Module, other: nn.Module | None = None):
        import lightning.pytorch as pl

        class LitClassifier(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.save_hyperparameters({"arch": "cnn_small", "lr": 0.05, "classes": 10})
                self.model = net
                self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
                if other is not None:
                    self.teacher = other

            def training_step(self, batch, _):
                x, y = batch
                return self.criterion(self.model(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.model.parameters(), lr=0.05)

        return LitClassifier()


def lightning_checkpoint(path: Path, net: nn.Module, other: nn.Module | None = None) -> None:
    """One training step with Lightning's Trainer, then its own save_checkpoint."""
    pl = pytest.importorskip("lightning.pytorch", reason="lightning is in the dev extra; not installed here")
    x = torch.randn(4, SHAPE.in_channels, SHAPE.image_size, SHAPE.image_size)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 2, 3])), batch_size=4)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(path.parent))
    trainer.fit(Classifier.make(net, other), loader)
    trainer.save_checkpoint(path)


@pytest.mark.slow  # Lightning's Trainer
def test_lightning_checkpoint_with_the_net_as_self_model(tmp_path):
    net = trained_net()
    lightning_checkpoint(tmp_path / "epoch=0-step=1.ckpt", net)
    state = torch.load(tmp_path / "epoch=0-step=1.ckpt", weights_only=False)["state_dict"]
    assert all(k.startswith("model.") for k in state)  # what this test is about
    nets = build_nets(recipe(checkpoint=str(tmp_path / "epoch=0-step=1.ckpt")), SHAPE)
    assert_loaded(nets.teacher, net)  # the net after Lightning's step (it trained `net` in place)


@pytest.mark.slow  # Lightning's Trainer
def test_lightning_checkpoint_with_two_nets_of_one_arch_needs_the_prefix(tmp_path):
    net, other = trained_net(7), trained_net(8)
    file = tmp_path / "two.ckpt"
    lightning_checkpoint(file, net, other)
    with pytest.raises(CheckpointError, match=r"holds \d+ of cnn_small's tensors under each of 'model\.', 'teacher\.'; "
                                              r"set teacher\.checkpoint_prefix to the one to load"):
        build_nets(recipe(checkpoint=str(file)), SHAPE)
    assert_loaded(build_nets(recipe(checkpoint=str(file), checkpoint_prefix="teacher."), SHAPE).teacher, other)
    assert_loaded(build_nets(recipe(checkpoint=str(file), checkpoint_prefix="model."), SHAPE).teacher, net)


def test_a_nested_entry_is_named_with_a_dotted_checkpoint_key(tmp_path):
    net = trained_net()
    torch.save({"meta": {"step": 5}, "weights": {"ema": net.state_dict()}}, tmp_path / "custom.pt")
    with pytest.raises(CheckpointError, match=r"custom\.pt holds no model weights where edgekd looks .*; its top-level "
                                              r"keys: meta, weights; name the entry that holds them with "
                                              r"teacher\.checkpoint_key"):
        build_nets(recipe(checkpoint=str(tmp_path / "custom.pt")), SHAPE)
    assert_loaded(build_nets(recipe(checkpoint=str(tmp_path / "custom.pt"), checkpoint_key="weights.ema"), SHAPE).teacher,
                  net)
    with pytest.raises(CheckpointError, match=r"teacher\.checkpoint_key 'weights\.model' is not in .*custom\.pt; its "
                                              r"top-level keys: meta, weights"):
        build_nets(recipe(checkpoint=str(tmp_path / "custom.pt"), checkpoint_key="weights.model"), SHAPE)


def test_when_nothing_fits_the_error_shows_the_keys_and_names_found(tmp_path):
    torch.manual_seed(0)
    other = build_model("resnet8", 10, 1, 32)
    torch.save({"state_dict": other.state_dict(), "epoch": 2}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as e:
        build_nets(recipe(checkpoint=str(tmp_path / "other.pt")), SHAPE)
    message = str(e.value)
    assert "does not fit cnn_small" in message and "unexpected keys (e.g. 'conv1.weight')" in message
    assert message.endswith("; read its 'state_dict' entry (the file's keys: state_dict, epoch)")
    assert len(message.splitlines()) == 1 and len(message.replace(str(tmp_path), "")) < 400


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_tensor_is_refused_by_name(tmp_path, bad):
    net = trained_net()
    state = net.state_dict()
    state["features.3.weight"][0, 0, 0, 0] = bad
    torch.save({"model": state}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan\.pth: tensor 'features\.3\.weight' holds 1 NaN or infinite value "
                                              r"of \d+; it cannot start a net"):
        build_nets(recipe(checkpoint=str(tmp_path / "nan.pth")), SHAPE)


def test_keys_that_say_where_need_a_checkpoint():
    with pytest.raises(RecipeError, match="checkpoint_key says where the weights are in checkpoint, which is not set"):
        recipe(checkpoint_key="model")


def test_both_nets_problems_are_named_in_one_go(tmp_path):
    r = build_recipe({"data": {"name": "digits"}, "teacher": {"arch": "cnn_small", "checkpoint": str(tmp_path / "t.pt")},
                      "student": {"arch": "cnn_tiny", "checkpoint": str(tmp_path / "s.pt")},
                      "distill": {"method": "dml"}, "train": {"epochs": 1}})
    with pytest.raises(Problems) as e:
        build_nets(r, SHAPE)
    assert [str(p) for p in e.value.problems] == [f"checkpoint {tmp_path / 't.pt'} does not exist",
                                                  f"checkpoint {tmp_path / 's.pt'} does not exist"]
    assert e.value.exit_code == 2


@pytest.mark.slow  # an edgekd process
def test_distill_checks_the_checkpoints_before_it_reads_the_data(tmp_path):
    """Both checkpoints are named, each on its line, and the data is never read: a corrupt image
    that decoding would refuse is not what the user hears about first."""
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / c / f"{i}.jpg")
    (root / "a" / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    torch.manual_seed(0)
    state = build_model("cnn_small", 2, 3, 32).state_dict()
    state["fc.bias"][1] = math.nan
    torch.save(state, tmp_path / "teacher.pt")
    (tmp_path / "r.yaml").write_text(f"""name: t
data: {{name: imagefolder, root: {root}, image_size: 32, val_fraction: 0.3, batch_size: 4}}
teacher: {{arch: cnn_small, checkpoint: teacher.pt}}
student: {{arch: cnn_tiny, checkpoint: missing.pt}}
distill: {{method: dml}}
train: {{epochs: 1}}
""")
    res = subprocess.run([sys.executable, "-m", "edgekd", "distill", "r.yaml", "--out", "run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [
        "edgekd: error: checkpoint teacher.pt: tensor 'fc.bias' holds 1 NaN or infinite value of 2; it cannot start a net",
        "edgekd: error: checkpoint missing.pt does not exist"]
    assert not (tmp_path / "run").exists()
    # With the checkpoints fixed, the data is read, and the corrupt image is found.
    torch.save(build_model("cnn_small", 2, 3, 32).state_dict(), tmp_path / "teacher.pt")
    torch.save(build_model("cnn_tiny", 2, 3, 32).state_dict(), tmp_path / "missing.pt")
    res = subprocess.run([sys.executable, "-m", "edgekd", "distill", "r.yaml", "--out", "run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "cannot decode image" in res.stderr and "0.jpg" in res.stderr, res.stderr
