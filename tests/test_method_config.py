"""Each method's own `distill:` settings: a key the method does not take is refused in one line,
overriding the method switches it, runs saved with the old flat section still load, and the recipe
needs no torch (no import cycle with the methods' training code)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgekd.compare import parse_variants
from edgekd.compare.variants import plan
from edgekd.training.method_settings import METHOD_SETTINGS
from edgekd.errors import RecipeError
from edgekd.recipe import Recipe, load_recipe, read_yaml_mapping, validate_recipe
from edgekd.saved_recipe import saved_recipe, saved_recipe_diff

import _cli

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "recipes/quickstart.yaml"
FLAT = REPO / "tests/data/flat_recipes"  # written by edgekd before each method had its own settings (README there)

# Every key of every method, at a value other than its default.
OWN_KEYS = {
    "ce": {"ce_weight": 0.5},
    "kd": {"temperature": 2.0, "ce_weight": 0.5, "kl_weight": 3.0},
    "dml": {"temperature": 2.0, "ce_weight": 0.5, "kl_weight": 3.0, "teacher_kl_weight": 0.25},
    "bdkd": {"temperature": 2.0, "ce_weight": 0.5, "kl_weight": 3.0, "reverse_weight": 2.0, "weighting": "soft",
             "soft_tau": 0.3, "switch": "flipped", "gap_temperature": 1.0, "teacher_kl_weight": 0.25,
             "teacher_divergence": "forward"},
}


def recipe_with(distill: dict) -> dict:
    raw = yaml.safe_load(QUICK.read_text())
    raw["distill"] = distill
    raw["teacher"]["checkpoint"] = "teacher.pt"  # kd distils from a trained teacher
    return raw


def test_every_key_of_every_method_is_listed_here():
    assert {m: set(s.setting_names()) for m, s in METHOD_SETTINGS.items()} == {m: set(k) for m, k in OWN_KEYS.items()}


@pytest.mark.parametrize("method", sorted(OWN_KEYS))
def test_each_method_takes_its_own_keys(method):
    r = validate_recipe(recipe_with({"method": method, **OWN_KEYS[method]}))
    assert type(r.distill) is METHOD_SETTINGS[method]
    assert r.to_dict()["distill"] == {"method": method, **OWN_KEYS[method]}
    assert Recipe.model_validate(r.to_dict()).digest() == r.digest()  # what a run saves loads back the same


@pytest.mark.parametrize("method", ["ce", "kd", "dml"])
def test_a_bdkd_key_under_another_method_is_refused_in_one_line(method):
    with pytest.raises(RecipeError) as e:
        validate_recipe(recipe_with({"method": method, "weighting": "soft"}))
    allowed = ", ".join(OWN_KEYS[method])
    assert str(e.value) == (f"recipe: distill.weighting is not a key of {method} (a key of bdkd); "
                            f"allowed for distill.method {method}: {allowed}")


def test_every_foreign_key_and_a_typo_are_named_at_once():
    with pytest.raises(RecipeError) as e:
        validate_recipe(recipe_with({"method": "ce", "temperature": 2, "teacher_kl_weight": 0, "temprature": 2}))
    assert str(e.value) == ("recipe: distill.temperature, distill.teacher_kl_weight, distill.temprature are not keys "
                            "of ce (keys of bdkd, dml, kd; temprature: no method's, a typo?); "
                            "allowed for distill.method ce: ce_weight")
    with pytest.raises(RecipeError, match=r"^recipe: unknown key 'distill.temprature' \(a typo\?\); allowed for "
                                          r"distill.method dml: temperature, ce_weight, kl_weight, teacher_kl_weight$"):
        validate_recipe(recipe_with({"method": "dml", "temprature": 2}))


def test_method_defaults_and_what_it_needs_of_the_run():
    raw = recipe_with({"temperature": 2.0})  # no method: bdkd, the default
    assert load_recipe(QUICK, ["distill.method=bdkd"]).distill.method == validate_recipe(raw).distill.method == "bdkd"
    del raw["distill"]
    assert validate_recipe(raw).distill == METHOD_SETTINGS["bdkd"]()
    # kd keeps its teacher frozen (KDSettings.trains_teacher), so it needs a trained one.
    raw = recipe_with({"method": "kd"})
    del raw["teacher"]["checkpoint"]
    with pytest.raises(RecipeError, match="distill.method kd distils from a frozen, trained teacher: set teacher.checkpoint"):
        validate_recipe(raw)
    assert [m for m, s in METHOD_SETTINGS.items() if not s.trains_teacher] == ["kd"]
    with pytest.raises(RecipeError, match=r"^recipe: distill.method: 'dkd' is not a method; available: bdkd, ce, dml, kd$"):
        validate_recipe(recipe_with({"method": "dkd"}))
    with pytest.raises(RecipeError, match=r"^recipe: distill: must be a section \(method and its keys\), got 'dml'$"):
        validate_recipe(recipe_with("dml"))


def test_overriding_the_method_leaves_out_the_recipes_keys_for_its_own():
    """quickstart writes BD-KD keys (teacher_divergence: none, ...); `--set distill.method=dml` trains DML
    with the keys the two share (temperature, kl_weight, teacher_kl_weight) and none of the others."""
    r = load_recipe(QUICK, ["distill.method=dml", "distill.teacher_kl_weight=0.5"])
    assert r.to_dict()["distill"] == {"method": "dml", "temperature": 4.0, "ce_weight": 1.0, "kl_weight": 1.0,
                                      "teacher_kl_weight": 0.5}
    assert load_recipe(QUICK, {"distill.method": "ce"}).to_dict()["distill"] == {"method": "ce", "ce_weight": 1.0}
    # A key the override itself sets is the user's: refused when the method does not take it, in any order.
    for overrides in (["distill.method=dml", "distill.weighting=soft"], ["distill.weighting=soft", "distill.method=dml"]):
        with pytest.raises(RecipeError, match=r"quickstart.yaml: distill.weighting is not a key of dml \(a key of bdkd\)"):
            load_recipe(QUICK, overrides)
    # Without a switch the recipe's own keys are checked as written.
    raw = yaml.safe_load(QUICK.read_text())
    raw["distill"]["method"] = "dml"
    with pytest.raises(RecipeError, match=r"^recipe: distill.weighting, distill.reverse_weight, "
                                          r"distill.teacher_divergence are not keys of dml \(keys of bdkd\)"):
        validate_recipe(raw)


@pytest.mark.parametrize("method", sorted(OWN_KEYS))
def test_a_run_saved_with_the_flat_distill_section_loads(method):
    """tests/data/flat_recipes: quickstart's ce, kd, dml and bdkd runs as the flat DistillConfig saved them,
    every method's key at its value (teacher_divergence: none under ce, a key ce never read) or default."""
    flat = read_yaml_mapping(FLAT / f"{method}.yaml")
    assert set(flat["distill"]) == {"method", *OWN_KEYS["bdkd"]}
    ov = {"ce": [], "kd": ["teacher.checkpoint=teacher.pt"], "dml": ["distill.temperature=2", "distill.teacher_kl_weight=0.5"],
          "bdkd": ["distill.weighting=soft", "distill.gap_temperature=1"]}[method]
    now = load_recipe(QUICK, [f"distill.method={method}", *ov])  # the same run, asked for today
    assert saved_recipe(flat).to_dict() == now.to_dict()
    assert saved_recipe_diff(flat, now) == []  # --resume and compare's reuse: the same recipe
    assert saved_recipe_diff(flat, load_recipe(QUICK, [f"distill.method={method}", *ov, "distill.ce_weight=2"])) == [
        "distill.ce_weight"]


def test_resume_takes_a_last_pt_with_the_flat_section():
    pytest.importorskip("torch")
    from edgekd.training.run_dir import check_resume_recipe

    flat = read_yaml_mapping(FLAT / "dml.yaml")
    assert check_resume_recipe(flat, load_recipe(QUICK, ["distill.method=dml", "distill.temperature=2",
                                                         "distill.teacher_kl_weight=0.5"])) == []


def test_compare_variants_keep_their_keys_and_refuse_another_methods():
    variants = parse_variants(["kd:temperature=4:kl_weight=3", "bdkd:kl_weight=2:reverse_weight=2", "ce",
                               "dml:distill.teacher_kl_weight=2"])
    runs = {v.label: r for v, _, r in plan(QUICK, variants, [0], ["teacher.checkpoint=teacher.pt"])}
    assert runs["kd:temperature=4:kl_weight=3"].to_dict()["distill"] == {"method": "kd", "temperature": 4.0,
                                                                         "ce_weight": 1.0, "kl_weight": 3.0}
    bdkd = runs["bdkd:kl_weight=2:reverse_weight=2"].distill
    assert (bdkd.kl_weight, bdkd.reverse_weight, bdkd.teacher_divergence) == (2.0, 2.0, "none")  # the recipe's own
    assert runs["ce"].to_dict()["distill"] == {"method": "ce", "ce_weight": 1.0}
    assert runs["dml:distill.teacher_kl_weight=2"].distill.teacher_kl_weight == 2.0
    for spec, key in (("dml:weighting=soft", "weighting"), ("kd:distill.reverse_weight=2", "reverse_weight")):
        with pytest.raises(RecipeError, match=rf"^--methods '{spec}': distill.{key} is not a key of {spec[:spec.index(':')]} "
                                              r"\(a key of bdkd\); allowed for distill.method"):
            parse_variants(["ce", spec])
    with pytest.raises(RecipeError, match=r"^--methods 'dkd:temperature=2': 'dkd' is not a method; available: "):
        parse_variants(["dkd:temperature=2"])
    # --set applies to every variant: the one whose method does not take the key is named.
    with pytest.raises(RecipeError, match=r"^variant 'ce': .*quickstart.yaml: distill.temperature is not a key of ce"):
        plan(QUICK, parse_variants(["bdkd", "ce"]), [0], ["distill.temperature=2"])


def test_cli_refuses_another_methods_key_in_one_line(tmp_path, capsys):
    code, _, err = _cli.cli(capsys, "distill", str(QUICK), "--set", "distill.method=dml", "--set",
                            "distill.weighting=soft", "--out", str(tmp_path / "run"))
    assert (code, err.count("\n")) == (2, 1) and "Traceback" not in err
    assert "distill.weighting is not a key of dml (a key of bdkd); allowed for distill.method dml:" in err
    code, _, err = _cli.cli(capsys, "compare", str(QUICK), "--methods", "ce,dml:switch=flipped", "--out",
                            str(tmp_path / "cmp"))
    assert (code, err.count("\n")) == (2, 1) and "--methods 'dml:switch=flipped': distill.switch" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cmp").exists()


def test_the_docs_say_which_keys_belong_to_which_method():
    method_md = (REPO / "docs/method.md").read_text()
    for method, keys in OWN_KEYS.items():
        section = method_md.split(f"\n## {method}:")[1].split("\n## ")[0].replace("\n", " ")
        assert re.findall(r"`(\w+)`", re.search(r"Keys: (.*?)(?:\.|\(|$)", section).group(1)) == list(keys), method
    # README's recipe reference ends each distill key's row with the methods that take it.
    rows = re.findall(r"^\| `distill\.(\w+)` \|.*; ([^;|]+) \|$", (REPO / "README.md").read_text(), re.M)
    takers = {key: sorted(m for m in OWN_KEYS if key in OWN_KEYS[m]) for key in OWN_KEYS["bdkd"]}
    assert {key: sorted(OWN_KEYS) if who == "every method" else sorted(re.findall(r"`(\w+)`", who))
            for key, who in rows if key != "method"} == takers


def _python(code: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow  # Python processes
def test_the_recipe_and_compare_plan_without_torch_and_the_methods_without_the_recipe():
    """The recipe reads the methods' settings, never their training code: no import cycle."""
    _python("import sys; sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
            "from edgekd.compare.variants import parse_variants, plan\n"
            f"plan({str(QUICK)!r}, parse_variants(['ce', 'dml:temperature=2', 'bdkd']), [0], [])\n"
            "assert 'edgekd.training.methods' not in sys.modules\n")
    pytest.importorskip("torch")
    _python("import sys\n"
            "from edgekd.training.methods import get_method\n"
            "assert 'edgekd.recipe' not in sys.modules\n"
            "assert get_method('kd').trains_teacher is False\n")
