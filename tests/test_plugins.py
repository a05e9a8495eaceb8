"""Model plugins: models that installed packages register through the `edgekd.models`
entry point group, and `edgekd models`.

Most tests install a package the way pip leaves one in site-packages (its module and
a real <name>-<version>.dist-info with METADATA and entry_points.txt, which is all
importlib.metadata reads) into a fresh folder on sys.path. The example plugin is
installed that way from its own pyproject.toml; the slow end-to-end test installs it
with pip itself, then distils, exports and validates with it through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd.errors import ModelError
from edgekd.models import available_models, build_model, count_parameters, model_options, model_source, registry

from _cli import cli

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples/plugin"
QUICKSTART = REPO / "recipes/quickstart.yaml"


def install(site: Path, name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """An installed distribution as pip lays it out: the modules beside a dist-info folder."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[edgekd.models]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for module, text in modules.items():
        (site / f"{module}.py").write_text(text)


def install_example(site: Path) -> None:
    """examples/plugin as its pyproject.toml declares it."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    project = meta["project"]
    modules = {m: (EXAMPLE / f"{m}.py").read_text() for m in meta["tool"]["setuptools"]["py-modules"]}
    install(site, project["name"], project["version"], project["entry-points"]["edgekd.models"], modules)


GOOD_FACTORY = """from torch import nn
def build(num_classes, in_channels, image_size, *, width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An empty site-packages folder first on sys.path, and a model registry that has not
    looked for plugins yet (restored afterwards, with the modules the test imported)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # also clears importlib's path caches
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    monkeypatch.setattr(registry, "_PLUGINS", None)
    modules = set(sys.modules)
    yield site
    for name in set(sys.modules) - modules:
        if name.startswith("edgekd_"):
            del sys.modules[name]


def test_example_plugin_is_found_by_name_and_imported_only_when_used(site):
    install_example(site)
    assert "sepnet" in available_models()  # read from the metadata ...
    assert "edgekd_sepnet" not in sys.modules  # ... without running the plugin's code
    model = build_model("sepnet", num_classes=10, in_channels=1, image_size=32, options={"width": 8})
    assert "edgekd_sepnet" in sys.modules
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert model.edgekd_arch == "sepnet"
    assert model_options("sepnet") == {"width": 16}
    assert model_source("sepnet") == "edgekd-sepnet 0.1.0"
    assert model_source("cnn_tiny") == "built in"
    with pytest.raises(ModelError, match="model 'sepnet' has no option 'depth'; allowed: width"):
        build_model("sepnet", 10, 1, 32, {"depth": 3})
    with pytest.raises(ModelError, match="sepnet option width must be a positive integer"):
        build_model("sepnet", 10, 1, 32, {"width": 0})


def test_edgekd_models_lists_plugins_with_source_and_parameter_count(site, capsys):
    install_example(site)
    code, out, err = cli(capsys, "models", "--image-size", "28", "--in-channels", "1", "--num-classes", "5")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == (f"{len(available_models())} models; parameters and MACs (one image) at 28x28, 1 input "
                        "channel, 5 classes")
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == set(available_models())
    for name, source in (("sepnet", "edgekd-sepnet 0.1.0"), ("cnn_tiny", "built in")):
        params = count_parameters(build_model(name, 5, 1, 28))
        assert rows[name][1] == f"{params:,}" and " ".join(rows[name]).endswith(source), rows[name]
    assert rows["sepnet"][3] == "width=16"


BROKEN = {
    "import error": ({"broken": "edgekd_broken:build"}, {"edgekd_broken": "import edgekd_not_installed_dependency\n"},
                     "cannot be imported: ModuleNotFoundError: No module named 'edgekd_not_installed_dependency'"),
    "bad signature": ({"broken": "edgekd_broken:build"},
                      {"edgekd_broken": "def build(num_classes, in_channels, image_size, width=4):\n    pass\n"},
                      "factory for 'broken' must be fn(num_classes, in_channels, image_size, *, option=default, "
                      "...), not fn(num_classes, in_channels, image_size, width=4)"),
    "not callable": ({"broken": "edgekd_broken:build"}, {"edgekd_broken": "build = 42\n"},
                     "factory for 'broken' is a int, not a callable"),
    # Imported and signature-checked fine; the call itself raises (a bug in the plugin, not the recipe).
    "factory raises": ({"broken": "edgekd_broken:build"},
                       {"edgekd_broken": "def build(num_classes, in_channels, image_size):\n"
                                         "    raise RuntimeError('weights file missing\\nsecond line')\n"},
                       "building 'broken' failed: RuntimeError: weights file missing"),
    # sys.exit inside a plugin would end edgekd with the plugin's exit code and no word: not here.
    "exits while imported": ({"broken": "edgekd_broken:build"}, {"edgekd_broken": "import sys\nsys.exit(3)\n"},
                             "cannot be imported: SystemExit: 3"),
    "exits while built": ({"broken": "edgekd_broken:build"},
                          {"edgekd_broken": "import sys\ndef build(num_classes, in_channels, image_size):\n"
                                            "    sys.exit('no GPU found, bye')\n"},
                          "building 'broken' failed: SystemExit: no GPU found, bye"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_plugin_is_one_line_naming_its_package_exit_2(site, capsys, case):
    entry_points, modules, problem = BROKEN[case]
    install(site, "broken-plugin", "1.2", entry_points, modules)
    name, value = next(iter(entry_points.items()))
    code, out, err = cli(capsys, "models")
    assert code == 2
    assert err == (f"edgekd: error: model plugin '{name}' (package broken-plugin 1.2, entry point "
                   f"{name} = {value}){':' if case not in ('import error', 'exits while imported') else ''} "
                   f"{problem}\n")
    # Every other model is still listed (and works); only the broken one is left out.
    listed = [line.split()[0] for line in out.splitlines()[2:]]
    assert name not in listed and "cnn_tiny" in listed and out.startswith(f"{len(listed)} models;")
    assert build_model("cnn_tiny", 10, 1, 32) is not None


def test_recipe_naming_a_broken_plugin_fails_before_the_run_exists(site, capsys, tmp_path):
    install(site, "broken-plugin", "1.2", {"broken": "edgekd_broken:build"},
            {"edgekd_broken": "raise RuntimeError('sepnet weights missing\\nsecond line')\n"})
    out_dir = tmp_path / "run"
    code, _, err = cli(capsys, "distill", str(QUICKSTART), "--set", "student.arch=broken", "--out", str(out_dir))
    assert code == 2 and not out_dir.exists()
    assert err == ("edgekd: error: model plugin 'broken' (package broken-plugin 1.2, entry point broken = "
                   "edgekd_broken:build) cannot be imported: RuntimeError: sepnet weights missing\n")
    with pytest.raises(ModelError, match="package broken-plugin 1.2"):  # the library raises the typed error
        build_model("broken", 10)


def listed_models(out: str) -> set[str]:
    """The model names of `edgekd models`' table."""
    return {line.split()[0] for line in out.splitlines()[2:]}


def test_two_packages_registering_one_name_refuse_only_that_name(site, capsys):
    install(site, "first-plugin", "1.0", {"twin": "edgekd_first:build"}, {"edgekd_first": GOOD_FACTORY})
    install(site, "second-plugin", "2.0", {"twin": "edgekd_second:build"}, {"edgekd_second": GOOD_FACTORY})
    install(site, "solo-plugin", "3.0", {"solo": "edgekd_solo:build"}, {"edgekd_solo": GOOD_FACTORY})
    # Every other model, built-in or plugin, still builds ...
    assert isinstance(build_model("cnn_tiny", 10), torch.nn.Module)
    assert isinstance(build_model("solo", 10, 1, 8), torch.nn.Module)
    assert "twin" not in available_models() and set(registry.ambiguous_models()) == {"twin"}
    # ... and only the ambiguous name is refused, naming both packages.
    with pytest.raises(ModelError, match="the name 'twin' is also registered by model plugin 'twin'") as e:
        build_model("twin", 10)
    assert "package first-plugin 1.0" in str(e.value) and "package second-plugin 2.0" in str(e.value)
    # `edgekd models` lists the others, then names the ambiguous one in one line, exit 2.
    code, out, err = cli(capsys, "models")
    assert code == 2 and err.count("\n") == 1 and err.startswith("edgekd: error: model plugin 'twin'")
    assert "uninstall one of them or rename an entry point" in err
    assert listed_models(out) == set(available_models()) and {"solo", "cnn_tiny"} <= listed_models(out)
    assert out.splitlines()[0].startswith(f"{len(available_models())} models;")


def test_a_plugin_claiming_a_built_in_name_refuses_only_that_name(site, capsys):
    install(site, "my-models", "1.0", {"cnn_tiny": "edgekd_mine:build"}, {"edgekd_mine": GOOD_FACTORY})
    assert isinstance(build_model("cnn_small", 10), torch.nn.Module)
    with pytest.raises(ModelError, match=r"^model plugin 'cnn_tiny' \(package my-models 1.0, entry point "
                                         r"cnn_tiny = edgekd_mine:build\): edgekd already has a model named "
                                         r"'cnn_tiny' \(built in\); rename the entry point$"):
        build_model("cnn_tiny", 10)
    code, out, err = cli(capsys, "models")
    assert code == 2 and err.count("\n") == 1 and "edgekd already has a model named 'cnn_tiny'" in err
    assert "cnn_tiny" not in listed_models(out) and "cnn_small" in listed_models(out)


def test_a_plugin_factory_raising_a_model_error_keeps_its_own_line(site):
    install_example(site)  # sepnet checks its option with registry.require_positive_int
    with pytest.raises(ModelError, match="^sepnet option width must be a positive integer, got -1$"):
        build_model("sepnet", 10, 1, 32, {"width": -1})


def test_factory_returning_something_else_than_a_module(site):
    install(site, "odd-plugin", "0.1", {"odd": "edgekd_odd:build"},
            {"edgekd_odd": "def build(num_classes, in_channels, image_size):\n    return 'a model'\n"})
    with pytest.raises(ModelError, match=r"model 'odd' \(odd-plugin 0.1\): its factory returned a str, "
                                         r"not a torch.nn.Module"):
        build_model("odd", 10)


@pytest.mark.slow
def test_pip_installed_plugin_distils_exports_and_validates(tmp_path):
    """The example installed by pip (from a copy: building writes into the source folder),
    named in a recipe, trained, exported (export rebuilds the student from its arch) and
    validated, each as its own `edgekd` process that finds the plugin on PYTHONPATH."""
    source, target = tmp_path / "plugin-src", tmp_path / "site"
    shutil.copytree(EXAMPLE, source)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(source)], capture_output=True, text=True,
                         timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p))

    def edgekd(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgekd", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)

    listed = edgekd("models", "--in-channels", "1")
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[0] == "sepnet" and line.endswith("edgekd-sepnet 0.1.0")
               for line in listed.stdout.splitlines()), listed.stdout
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    res = edgekd("distill", QUICKSTART, "--set", "train.epochs=1", "--set", "student.arch=sepnet",
                 "--set", "student.options={width: 8}", "--out", run, "--quiet")
    assert res.returncode == 0, res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["student"]["arch"] == "sepnet"
    res = edgekd("export", run, "--out", bundle, "--formats", "fp32")
    assert res.returncode == 0, res.stderr
    report = tmp_path / "validate.json"
    # Gates that any file passes: a 1-epoch student misses the recipe's calibration gate.
    res = edgekd("validate", bundle, "--json", report, "--max-ece", "1", "--max-acc-drop", "1",
                 "--min-agreement", "0", "--max-ece-drift", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads(report.read_text())
    assert results["bundle"]["model"]["arch"] == "sepnet" and results["bundle"]["model"]["options"] == {"width": 8}
    # ONNX Runtime's accuracy on the val split is the trained PyTorch student's (within one image).
    assert results["data"]["n"] == summary["eval_images"]
    assert results["formats"]["fp32"]["accuracy"] == pytest.approx(summary["student"]["accuracy"],
                                                                   abs=1.5 / summary["eval_images"])
