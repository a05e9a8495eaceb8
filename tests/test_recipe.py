"""Recipe schema, overrides and every class of bad recipe, through the real CLI."""

from pathlib import Path

import pytest

import yaml

from edgekd.errors import RecipeError
from edgekd.recipe import Recipe, load_recipe

import _cli

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def run_cli(*args, cwd):
    return _cli.edgekd(*args, cwd=cwd)


def quickstart() -> dict:
    return yaml.safe_load((REPO / "recipes/quickstart.yaml").read_text())


# Recipes that pretrain a teacher for another recipe, with CE alone: {pretraining recipe: the recipe it serves}.
PRETRAINING = {"cifar10-edge-teacher": "cifar10-edge"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate_and_use_bdkd(path):
    r = load_recipe(path)
    assert r.distill.method == ("ce" if path.stem in PRETRAINING else "bdkd")
    assert r.name == path.stem


@pytest.mark.parametrize("stem", sorted(PRETRAINING))
def test_a_pretrained_teacher_saw_only_its_recipes_training_images(stem):
    """The teacher is pretrained on the served recipe's own split: the same data section but for its
    augmentation (root, sizes, split seed), so it never sees that recipe's val, tune or test images;
    and the served recipe loads its student.pt as the teacher, of the same architecture."""
    pre, served = load_recipe(REPO / f"recipes/{stem}.yaml"), load_recipe(REPO / f"recipes/{PRETRAINING[stem]}.yaml")
    data = [{k: v for k, v in r.to_dict()["data"].items() if k != "augment"} for r in (pre, served)]
    assert data[0] == data[1]
    assert served.teacher.arch == pre.student.arch
    assert served.teacher.checkpoint == f"results/{stem}/student.pt"


def test_shipped_recipe_set():
    names = {p.stem for p in RECIPES}
    assert {"quickstart", "mobilenet", "cifar100-resnet", "cifar10-cpu"} <= names


def test_defaults_and_overrides(tmp_path):
    r = load_recipe(REPO / "recipes/quickstart.yaml", ["train.epochs=3", "distill.weighting=soft", "optim.lr=1e-2",
                                                       "student.options.width=8", "data.augment.hflip=true"])
    assert r.train.epochs == 3 and r.distill.weighting == "soft" and r.optim.lr == pytest.approx(0.01)
    assert r.student.options == {"width": 8} and r.data.augment.hflip is True
    assert r.to_dict()["validate"]["max_ece"] == 0.05  # the YAML key is `validate`
    assert Recipe.model_validate(r.to_dict()).digest() == r.digest()


def test_speed_settings_are_auto_unless_forced():
    """train.channels_last / train.compile default to auto (resolved per run by distill/setup.py);
    an explicit true or false is kept as written, so a recipe that forces one still means it."""
    r = load_recipe(REPO / "recipes/quickstart.yaml")
    assert (r.train.channels_last, r.train.compile, r.train.amp) == ("auto", "auto", "auto")
    for value in (True, False):
        r = load_recipe(REPO / "recipes/quickstart.yaml", [f"train.channels_last={value}", f"train.compile={value}"])
        assert r.train.channels_last is value and r.train.compile is value
        assert Recipe.model_validate(r.to_dict()).train.compile is value  # a saved recipe loads back the same
    assert load_recipe(REPO / "recipes/cifar10-distill.yaml").train.channels_last is True
    # YAML reads a bare `off` as false; for train.amp it is the word off.
    assert load_recipe(REPO / "recipes/quickstart.yaml", ["train.amp=off"]).train.amp == "off"


def _bad(tmp_path, mutate=None, text=None):
    p = tmp_path / "bad.yaml"
    if text is None:
        raw = quickstart()
        mutate(raw)
        text = yaml.safe_dump(raw)
    p.write_text(text)
    return p


BAD = {
    "typo_top": (lambda r: r.update(distil={"method": "bdkd"}), "unknown key 'distil'"),
    "typo_nested": (lambda r: r["optim"].update(learning_rate=0.1), "unknown key 'optim.learning_rate'"),
    "wrong_type": (lambda r: r["train"].update(epochs="ten"), "train.epochs"),
    "epochs_zero": (lambda r: r["train"].update(epochs=0), "train.epochs"),
    "temperature_zero": (lambda r: r["distill"].update(temperature=0), "distill.temperature"),
    "temperature_negative": (lambda r: r["distill"].update(temperature=-2), "distill.temperature"),
    "unknown_method": (lambda r: r["distill"].update(method="dkd"), "distill.method"),
    "unknown_weighting": (lambda r: r["distill"].update(weighting="medium"), "distill.weighting"),
    "unknown_dataset": (lambda r: r["data"].update(name="mnist"), "data.name"),
    "val_fraction_range": (lambda r: r["data"].update(val_fraction=1.5), "data.val_fraction"),
    "bad_device": (lambda r: r["train"].update(device="tpu"), "train.device"),
    "missing_section": (lambda r: r.pop("student"), "missing required key 'student'"),
    "kd_without_teacher": (lambda r: r.update(distill={"method": "kd"}), "teacher.checkpoint"),
    "bdkd_key_under_dml": (lambda r: r.update(distill={"method": "dml", "weighting": "soft"}),
                           "distill.weighting is not a key of dml (a key of bdkd); allowed for distill.method dml: "
                           "temperature, ce_weight, kl_weight, teacher_kl_weight"),
    "imagefolder_without_root": (lambda r: r["data"].update(name="imagefolder"), "data.root"),
    # quickstart sets crop_padding: 2, which crop: resized would never read.
    "padding_with_resized_crop": (lambda r: r["data"]["augment"].update(crop="resized"),
                                  "data.augment: crop_padding does not apply to crop: resized"),
    "crop_scale_with_pad_crop": (lambda r: r["data"]["augment"].update(crop_scale=[0.3, 1.0]),
                                 "data.augment: crop_scale does not apply to crop: pad"),
    "crop_scale_range": (lambda r: r["data"]["augment"].update(crop="resized", crop_padding=4, crop_scale=[0.5, 1.5]),
                         "crop_scale must be [min, max] with 0 < min <= max <= 1"),
    "unknown_crop": (lambda r: r["data"]["augment"].update(crop="center"), "data.augment.crop"),
    "channels_last_word": (lambda r: r["train"].update(channels_last="fast"),
                           "train.channels_last: must be auto, true or false, got 'fast'"),
    "compile_number": (lambda r: r["train"].update(compile=1), "train.compile: must be auto, true or false, got 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_values_in_process(tmp_path, case):
    mutate, needle = BAD[case]
    with pytest.raises(RecipeError) as e:
        load_recipe(_bad(tmp_path, mutate))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def _assert_clean_failure(res, needle, cwd):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]
    assert not (cwd / "runs").exists(), "a bad recipe must not create a run directory"


@pytest.mark.slow  # a `python -m edgekd` process per case
@pytest.mark.parametrize("case", ["typo_nested", "epochs_zero", "temperature_zero", "unknown_method", "bdkd_key_under_dml"])
def test_bad_recipe_cli(tmp_path, case):
    mutate, needle = BAD[case]
    res = run_cli("distill", str(_bad(tmp_path, mutate)), cwd=tmp_path)
    _assert_clean_failure(res, needle, tmp_path)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("data: [unclosed\n", "not valid YAML at line"),
        ("", "is empty"),
        ("- data\n- teacher\n", "must be a mapping"),
        ("!!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML"),
        ("data: !!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML"),
    ],
    ids=["broken", "empty", "list", "tag_top", "tag_nested"],
)
@pytest.mark.slow  # a `python -m edgekd` process per case
def test_unparseable_recipes_cli(tmp_path, text, needle):
    res = run_cli("distill", str(_bad(tmp_path, text=text)), cwd=tmp_path)
    _assert_clean_failure(res, needle, tmp_path)
    assert not (tmp_path / "PWNED").exists(), "a recipe must never execute code"


@pytest.mark.slow  # a `python -m edgekd` process that imports torch
def test_unknown_arch_cli(tmp_path):
    res = run_cli("distill", str(_bad(tmp_path, lambda r: r["teacher"].update(arch="resnet1000"))), cwd=tmp_path)
    _assert_clean_failure(res, "resnet1000", tmp_path)


@pytest.mark.slow  # `python -m edgekd` processes
def test_bad_override_cli(tmp_path):
    recipe = str(REPO / "recipes/quickstart.yaml")
    res = run_cli("distill", recipe, "--set", "train.epochs", cwd=tmp_path)
    _assert_clean_failure(res, "KEY=VALUE", tmp_path)
    res = run_cli("distill", recipe, "--set", "train.epochz=3", cwd=tmp_path)
    _assert_clean_failure(res, "unknown key 'train.epochz'", tmp_path)


@pytest.mark.slow  # `python -m edgekd` processes
def test_missing_recipe_and_unknown_flag_cli(tmp_path):
    res = run_cli("distill", "nope.yaml", cwd=tmp_path)
    _assert_clean_failure(res, "does not exist", tmp_path)
    res = run_cli("distill", str(REPO / "recipes/quickstart.yaml"), "--epochs", "3", cwd=tmp_path)
    _assert_clean_failure(res, "--epochs", tmp_path)


def test_saved_sections_are_read_with_the_recipes_own_schema():
    """export reads a run's saved validate: and export: once, with Recipe's field definitions."""
    from edgekd.saved_recipe import saved_sections
    from edgekd.validation.gate import CHECKS, THRESHOLD

    full = Recipe.model_validate(quickstart())
    s = saved_sections({"name": "x", "validate": {"max_ece": 0.05, "max_acc_drop": 0.01}}, "student.pt")
    assert type(s.gate) is type(full.gate) and type(s.export) is type(full.export)
    # Every key, unset ones None (what manifest.json's gate holds), and the set ones as the gate reads them.
    assert s.gate.model_dump() == {"max_ece": 0.05, "max_acc_drop": 0.01, "min_agreement": None, "max_ece_drift": None,
                                   "max_class_acc_drop": None, "threshold": None, "min_threshold_agreement": None}
    assert s.gate.thresholds() == {"max_ece": 0.05, "max_acc_drop": 0.01}
    # the recipe's gate keys are the checks validate applies, and the confidence those decisions are made at
    assert set(s.gate.model_dump()) == {*CHECKS, THRESHOLD}
    assert saved_sections({}, "old.pt").export == full.export.__class__()  # an older student.pt: defaults
    with pytest.raises(RecipeError, match=r"^student.pt: validate.max_acc_drop: input should be greater than or equal to 0"):
        saved_sections({"validate": {"max_acc_drop": -0.1}}, "student.pt")
    with pytest.raises(RecipeError, match=r"^student.pt: unknown key 'export.budget' \(a typo\?\); allowed here: "
                                          r"int8_search, search_budget$"):
        saved_sections({"export": {"budget": 5}}, "student.pt")
