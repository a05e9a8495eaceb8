"""The edge study's decision (studies/cifar10_edge/decision.py) on comparison folders made by
`edgekd compare` itself from prediction files (no training, no export): every row's logits are made
up with known effects, so each hypothesis has a known verdict, and a wrong rule fails here. The
contrasts must be compare's own statistics; bad input is one line, exit 2, nothing written."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgekd import calibration
from edgekd.compare import parse_variants, plan, predictions, run_all
from edgekd.compare.variants import DEPLOYED
from studies.cifar10_edge import decision
from studies.cifar10_edge.rows import Labels

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/cifar10-edge.yaml"
CE, KD, BDKD = decision.CE, decision.KD, decision.BDKD
FLAVOURS = ["fp32", "int8_cpu", "int8_search"]
METHODS = [CE, f"{CE}+ts", KD, f"{KD}+ts", BDKD]
FINE_TUNE = "train.amp=off:train.channels_last=auto:optim.lr=0.001:optim.warmup_epochs=0:train.epochs=2"
QAT, CONTROL = f"bdkd:train.quantize=int8_cpu:{FINE_TUNE}", f"bdkd:{FINE_TUNE}"
SEEDS, N, DIGEST = [1, 2, 3], 2000, "test-images"
LAB = Labels()


def _calibrated(rng, n, scale=2.0):
    z = rng.normal(size=(n, 10)) * scale
    return z, (calibration.softmax(z).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)


def _planted(seed):
    """Per row name: the logits of each row of one seed. zA: accurate (~74%), near calibrated (ECE ~2.5%);
    z0: less accurate (~53%), calibrated. CE and BDKD* share zA (their accuracy does not differ); KD* is z0."""
    rng = np.random.default_rng(seed)
    z0, y = _calibrated(rng, N)
    boosted = z0.copy()
    boosted[np.arange(N), y] += 1.0
    za = boosted / calibration.fit_temperature(boosted, y)
    teacher = z0.copy()
    teacher[np.arange(N), y] += 3.0  # ~96%: 20 points above CE

    def noisy(z, s):
        return z + rng.normal(size=z.shape) * s

    rows = {
        "CE": 1.8 * za, "CE@fp32": 1.8 * za, "CE@int8_cpu": 2.16 * za, "CE@int8_search": noisy(1.8 * za, 0.02),
        "CE+TS@fp32": za, "CE+TS@int8_cpu": noisy(za, 0.05), "CE+TS@int8_search": noisy(za, 0.02),
        "KD*": 2 * z0, "KD*@fp32": 2 * z0, "KD*@int8_cpu": noisy(2 * z0, 0.05), "KD*@int8_search": noisy(2 * z0, 0.02),
        "KD*+TS@fp32": 1.25 * z0, "KD*+TS@int8_cpu": noisy(1.25 * z0, 0.05), "KD*+TS@int8_search": noisy(1.25 * z0, 0.02),
        "BDKD*": za, "BDKD*@fp32": za, "BDKD*@int8_cpu": 1.5 * za, "BDKD*@int8_search": noisy(za, 0.02),
        # H4 (its own folders): the INT8-aware file barely drifts from BDKD*@fp32, the float control's does.
        "QAT": za, "QAT@int8_cpu": noisy(za, 0.05), "control": za, "control@int8_cpu": 1.2 * za,
    }
    return rows, y, teacher


def _write(out, methods, flavours, seeds, name_of, quantization="minmax"):
    """Prediction files as compare writes them (trained rows, then deployed rows with their record)."""
    variants = parse_variants(methods, flavours)
    recipes = {(v.label, s): r for v, s, r in plan(RECIPE, variants, seeds, [])}
    for s in seeds:
        rows, y, teacher = _planted(s)
        for v in variants:
            if not (v.trained or v.deployed):
                continue  # a PyTorch +ts row reads its base's files
            r = recipes[(v.run_label, s)]
            z = rows[name_of(v.label)]
            meta = {"variant": v.label, "seed": s, "recipe_hash": r.digest(), "recipe": r.to_dict(), "eval_split": "test",
                    "eval_images": N, "eval_images_digest": DIGEST, "tune_images": N,
                    "teacher": calibration.calibration_metrics(teacher, y),
                    "summary": {"student": {"train_accuracy": 0.9, "params": 1_500_000}, "train_seconds": 600.0 + 60 * s,
                                "teacher": {"train_accuracy": 0.99, "params": 272_474}}}
            if v.deployed:
                quant = {"method": quantization if "quantize=" in v.label else "minmax"} if "int8" in v.deployed else None
                meta["deployed"] = {"flavour": v.deployed, "file": DEPLOYED[v.deployed], "bundle": f"bundles/{v.slug}",
                                    "sha256": "0" * 64, "quantization": quant,
                                    "temperature": 1.8 if v.base else None}
                if v.deployed == "int8_search":
                    meta["deployed"]["search"] = {"candidate": 0, "float_nodes": [], "images_per_s": 1100.0,
                                                  "fp32_images_per_s": 1000.0, "speed_vs_fp32": 1.1, "tried": 1,
                                                  "seconds": 1.0}
            predictions.save(out, v.slug, s, meta, y, z, y, z)


def _name(label):
    """compare label -> the planted row's name."""
    row, at, flavour = label.partition("@")
    names = {v: k for k, v in LAB.rows().items()} | {QAT: "QAT", CONTROL: "control"}
    return names[row] + at + flavour


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    out = root / "cifar10-edge"
    _write(out, METHODS, FLAVOURS, SEEDS, _name)
    # The references name the searched files, so compare's own tables hold H1's and H2's contrasts to check against.
    run_all(RECIPE, parse_variants(METHODS, FLAVOURS), SEEDS, [], out, log=lambda s: None, eval_split="test",
            replicates=100, reference=[f"{KD}@int8_search", f"{KD}+ts@int8_search"])
    h4 = []
    for s in SEEDS:  # one comparison per seed, as the plan's amendment runs them
        folder = root / f"h4-s{s}"
        _write(folder, [QAT, CONTROL], ["int8_cpu"], [s], _name, quantization="train.quantize")
        run_all(RECIPE, parse_variants([QAT, CONTROL], ["int8_cpu"]), [s], [], folder, log=lambda s: None,
                eval_split="test", replicates=100)
        h4.append(folder)
    return out, h4


def _copy(folders, tmp_path):
    out, h4 = folders
    new = tmp_path / "cmp"
    shutil.copytree(out, new)
    copies = []
    for f in h4:
        shutil.copytree(f, tmp_path / f.name)
        copies.append(tmp_path / f.name)
    return new, copies


def _h4_args(h4):
    return [a for f in h4 for a in ("--h4", str(f))]


def test_the_verdicts_are_those_planted(folders, tmp_path, capsys):
    out, h4 = _copy(folders, tmp_path)
    before = json.loads((out / "comparison.json").read_text())
    assert decision.main([str(out), *_h4_args(h4)]) == 0
    doc = json.loads((out / "comparison.json").read_text())
    d = doc.pop("decision")
    assert doc == before  # the decision is added; nothing of compare's is changed
    assert [c["holds"] for c in d["regime"]["conditions"]] == [True, True, True]
    gap, ece, secs = d["regime"]["conditions"]
    assert 0.15 < gap["measured"]["mean"] < 0.3 and ece["measured"]["mean"] > 0.05
    assert secs["measured"] == 780.0 and secs["per_row"]["KD*"]["median"] == 720.0
    # H1: KD*'s file is twice over-confident, BDKD*'s near calibrated.
    assert d["h1"]["verdict"].startswith("holds") and d["h1"]["ece"]["ci"][1] < -0.05
    # H2: against KD*+TS both halves hold; against CE+TS (the same accuracy) the accuracy half fails.
    kd_ts, ce_ts = d["h2"]["KD*+TS"], d["h2"]["CE+TS"]
    assert kd_ts["holds"] and kd_ts["verdict"].startswith("holds against KD*+TS")
    assert ce_ts["calibration_half"]["holds"] and not ce_ts["accuracy_half"]["holds"] and not ce_ts["holds"]
    assert ce_ts["accuracy"]["verdict"] == "no detectable difference" and "(no detectable difference)" in ce_ts["verdict"]
    assert ce_ts["verdict"].startswith("does not hold against CE+TS")
    # H3: CE+TS's file barely drifts while CE's does (a: contradicted); BDKD*'s drifts most (b: holds).
    assert d["h3"]["a"]["verdict"].startswith("contradicted") and d["h3"]["b"]["verdict"].startswith("holds")
    assert len(d["h3"]["a"]["per_seed"]) == 3 and d["h3"]["a"]["diff"] == pytest.approx(np.mean(d["h3"]["a"]["per_seed"]))
    # H4: the INT8-aware file drifts less than BDKD*'s plain one; the control's drift beside it.
    h = d["h4"]
    assert h["verdict"].startswith("holds") and h["seeds"] == SEEDS and h["ci"][1] < 0
    assert h["abs_drift"]["control"]["mean"] > h["abs_drift"]["QAT"]["mean"]
    assert [f["qat"] for f in h["folders"]] == [QAT] * 3 and [f["control"] for f in h["folders"]] == [CONTROL] * 3
    assert d["recommendation"].startswith("For INT8 on a CPU, train with online BD-KD")
    # Compare's own statistics: the same numbers as its paired tables of the searched files, and its drift table.
    assert d["h1"]["ece"] == doc["vs_reference"][f"{BDKD}@int8_search"]["metrics"]["ece"]
    assert kd_ts["accuracy"] == doc["vs_more_references"][f"{KD}+ts@int8_search"][f"{BDKD}@int8_search"]["metrics"]["accuracy"]
    for name, label in (("CE", CE), ("CE+TS", f"{CE}+ts"), ("BDKD*", BDKD)):
        own = doc["summary"][f"{label}@int8_cpu"]["deployed"]["vs_fp32"]["per_seed"]["abs_ece_drift"]
        assert d["h3"]["abs_drift"][name]["per_seed"] == pytest.approx(own, abs=1e-12)
    assert d["rows"]["BDKD*@int8_search"]["ece"] == doc["summary"][f"{BDKD}@int8_search"]["student"]["ece"]
    md = (out / "comparison.md").read_text()
    assert "### Decision: the pre-registered rules" in md and d["recommendation"] in md and "**" not in md
    assert "#### The INT8-aware fine-tune (H4)" in md and md.index("### Decision") < md.index("### vs ")
    printed = capsys.readouterr().out
    assert "H1: holds" in printed and "regime: teacher_gap holds" in printed and "wrote " in printed


def test_json_and_markdown_go_where_asked(folders, tmp_path):
    out, _ = folders
    before = (out / "comparison.json").read_bytes(), (out / "comparison.md").read_bytes()
    args = [str(out), "--json", str(tmp_path / "d.json"), "--markdown", str(tmp_path / "d.md")]
    assert decision.main(args) == 0
    assert ((out / "comparison.json").read_bytes(), (out / "comparison.md").read_bytes()) == before
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["command"].startswith("python -m studies.cifar10_edge.decision ") and doc["decision"]["h4"] is None
    md = (tmp_path / "d.md").read_text()
    assert md.startswith("# Decision") and "H4: not evaluated here (no --h4 folders)" in md


def _same_logits(source, label, folder, as_label, seed):
    """`as_label`'s predictions in `folder` take `label`'s logits in `source`, byte for byte (its .json kept)."""
    shutil.copyfile(predictions.paths(source, decision.rows_io.slug(label), seed)[0],
                    predictions.paths(folder, decision.rows_io.slug(as_label), seed)[0])


def test_no_detectable_difference_and_what_the_user_is_told(folders, tmp_path):
    """KD*'s and KD*+TS's searched files made BDKD*'s: H1 has no detectable difference, H2 fails against
    KD*+TS on accuracy, and the plan's rule says a frozen teacher plus a folded temperature is enough;
    the INT8-aware file made BDKD*'s plain one: H4 has no detectable difference."""
    out, h4 = _copy(folders, tmp_path)
    for s in SEEDS:
        _same_logits(out, f"{BDKD}@int8_search", out, f"{KD}@int8_search", s)
        _same_logits(out, f"{BDKD}@int8_search", out, f"{KD}+ts@int8_search", s)
        _same_logits(out, f"{BDKD}@int8_cpu", h4[s - 1], f"{QAT}@int8_cpu", s)
    _, d = decision.decide(out, LAB, h4)
    assert d["h1"]["verdict"] == "no detectable difference" and d["h1"]["ece"]["ci"] == [0.0, 0.0]
    assert not d["h2"]["KD*+TS"]["holds"] and d["h2"]["KD*+TS"]["calibration_half"]["holds"]
    assert d["recommendation"].startswith("For INT8 on a CPU, a frozen teacher plus a folded temperature is enough")
    assert "no detectable difference" in d["recommendation"]
    assert d["h4"]["verdict"] == "no detectable difference" and d["h4"]["per_seed"] == [0.0, 0.0, 0.0]


def test_a_worse_calibrated_bdkd_fails_h2s_calibration_half(folders, tmp_path):
    """BDKD*'s searched file made CE's (1.8x over-confident): H2's calibration half fails against both
    +TS rows, and KD*+TS, better calibrated beyond the CI, is what the user is told to ship."""
    out, _ = _copy(folders, tmp_path)
    for s in SEEDS:
        _same_logits(out, f"{CE}@int8_search", out, f"{BDKD}@int8_search", s)
    _, d = decision.decide(out, LAB)
    assert d["h1"]["verdict"].startswith("holds")  # KD*'s raw file is more over-confident still
    for name in ("KD*+TS", "CE+TS"):
        c = d["h2"][name]
        assert not c["calibration_half"]["holds"] and c["calibration_half"]["upper_ci"] >= 0.005 and not c["holds"]
        assert "calibration half fails (upper CI end +" in c["verdict"]
    assert d["h2"]["KD*+TS"]["accuracy_half"]["holds"]
    assert d["recommendation"].startswith("For INT8 on a CPU, a frozen teacher plus a folded temperature is enough")
    assert "better calibrated than BDKD*'s" in d["recommendation"]


def _contrast(diff, lo, hi, acc=(0.01, 0.005, 0.02)):
    verdict = "lower" if hi < 0 else "higher" if lo > 0 else "no detectable difference"
    a_verdict = "higher" if acc[1] > 0 else "lower" if acc[2] < 0 else "no detectable difference"
    return {"ece": {"diff": diff, "ci": [lo, hi], "verdict": verdict},
            "accuracy": {"diff": acc[0], "ci": list(acc[1:]), "verdict": a_verdict}}


@pytest.mark.parametrize("ece_ci, acc_ci, calibration, accuracy", [
    ((-0.01, 0.0049), (0.001, 0.02), True, True),
    ((-0.01, 0.005), (0.001, 0.02), False, True),  # the margin is strict: an upper end at +0.5 point fails
    ((0.004, 0.006), (0.001, 0.02), False, True),  # the upper end decides, not the lower
    ((0.001, 0.004), (-0.001, 0.02), True, False),  # worse ECE beyond the CI but within the margin: holds
    ((-0.01, -0.001), (-0.02, -0.001), True, False),
    (None, (0.001, 0.02), False, True),  # no interval: nothing is shown
])
def test_h2s_two_halves(ece_ci, acc_ci, calibration, accuracy):
    c = decision.h2_halves({"ece": {"diff": 0.0, "ci": None if ece_ci is None else list(ece_ci)},
                            "accuracy": _contrast(0.0, -1, 1, acc=(0.01, *acc_ci))["accuracy"]}, "KD*+TS")
    assert (c["calibration_half"]["holds"], c["accuracy_half"]["holds"], c["holds"]) == (calibration, accuracy,
                                                                                         calibration and accuracy)
    assert c["verdict"].startswith(("holds" if calibration and accuracy else "does not hold") + " against KD*+TS")
    said = ("holds (BDKD* more accurate)" if accuracy else "fails (BDKD* less accurate)" if acc_ci[1] < 0
            else "fails (no detectable difference)")
    assert f"accuracy half {said}" in c["verdict"]


def test_the_recommendation_follows_the_plan_rule():
    enough = "For INT8 on a CPU, a frozen teacher plus a folded temperature is enough"
    # BDKD* better beyond the CI, and beyond the 0.5-point margin: use it, by how much.
    wins = decision.recommendation(_contrast(-0.012, -0.02, -0.004))
    assert wins.startswith("For INT8 on a CPU, train with online BD-KD") and "1.20 points lower" in wins
    assert "[-2.00, -0.40]" in wins and "BDKD* more accurate" in wins
    # Better beyond the CI but the whole CI within the margin: KD*+TS is as good.
    small = decision.recommendation(_contrast(-0.003, -0.0045, -0.001))
    assert small.startswith(enough) and "only 0.30 points" in small and "within the 0.5-point margin" in small
    nothing = decision.recommendation(_contrast(0.001, -0.002, 0.004, acc=(0.0, -0.01, 0.01)))
    assert nothing.startswith(enough) and "no detectable difference" in nothing
    worse = decision.recommendation(_contrast(0.01, 0.004, 0.02))
    assert worse.startswith(enough) and "better calibrated than BDKD*'s" in worse


def _edit_comparison(folder, change):
    path = folder / "comparison.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("gap, ece, longest, holds", [
    (0.051, 0.031, 1500.0, [True, True, True]),
    (0.049, 0.031, 1500.0, [False, True, True]),
    (0.051, 0.029, 1500.0, [True, False, True]),
    (0.051, 0.031, 1501.0, [True, True, False]),
    (0.051, 0.031, None, [True, True, False]),  # a run whose time was not recorded: not shown to hold
])
def test_each_regime_condition_at_its_threshold(folders, gap, ece, longest, holds):
    out, _ = folders
    doc = json.loads((out / "comparison.json").read_text())
    ce_acc = {r["seed"]: r["student"]["accuracy"] for r in doc["runs"] if r["method"] == f"{CE}@fp32"}
    for r in doc["runs"]:
        if r["method"] == KD:  # the pretrained teacher's figures are read from KD*'s runs
            r["teacher"]["accuracy"] = ce_acc[r["seed"]] + gap
        if r["method"] == f"{CE}@fp32":
            r["student"]["ece"] = ece
        if r["method"] == BDKD and r["seed"] == 2:
            r["train_seconds"] = longest
    g = decision.regime(doc, LAB, SEEDS)
    assert [c["holds"] for c in g["conditions"]] == holds
    assert g["conditions"][0]["measured"]["mean"] == pytest.approx(gap)
    assert g["conditions"][1]["measured"]["mean"] == pytest.approx(ece)
    assert g["conditions"][2]["per_row"]["BDKD*"]["train_seconds"][1] == longest
    assert g["conditions"][2]["measured"] == (longest or 780.0)


def test_bad_input_is_one_line_and_writes_nothing(folders, tmp_path, capsys):
    out, h4 = _copy(folders, tmp_path)
    (tmp_path / "empty").mkdir()

    def drop_row(doc):
        doc["variants"].remove(f"{CE}+ts@int8_cpu")

    def drop_seed(doc):
        doc["runs"] = [r for r in doc["runs"] if not (r["method"] == f"{BDKD}@int8_search" and r["seed"] == 3)]

    def val(doc):
        doc["eval_split"] = "val"

    def other_images(folder, label, seed):
        path = predictions.paths(folder, decision.rows_io.slug(label), seed)[1]
        meta = json.loads(path.read_text())
        meta["eval_images_digest"] = "other-images"
        path.write_text(json.dumps(meta))

    def ambiguous(folder):
        _edit_comparison(folder, lambda doc: doc["variants"].append("bdkd:optim.lr=0.002@int8_cpu"))

    def not_learned(folder):
        path = predictions.paths(folder, decision.rows_io.slug(f"{QAT}@int8_cpu"), 2)[1]
        meta = json.loads(path.read_text())
        meta["deployed"]["quantization"]["method"] = "minmax"
        path.write_text(json.dumps(meta))

    main = lambda o, h: [str(o)]
    with_h4 = lambda o, h: [str(o), *_h4_args(h)]
    cases = [  # (what to break in a fresh copy, the arguments, the message)
        (None, lambda o, h: [str(tmp_path / "none")], "is not a folder"),
        (None, lambda o, h: [str(tmp_path / "empty")], "comparison.json is missing"),
        (lambda o, h: _edit_comparison(o, drop_row), main, f"has no row '{CE}+ts@int8_cpu'"),
        (lambda o, h: _edit_comparison(o, drop_seed), main, "has runs of seeds 1, 2, the comparison's seeds are 1, 2, 3"),
        (lambda o, h: _edit_comparison(o, val), main, "reports on the val split"),
        (lambda o, h: predictions.paths(o, decision.rows_io.slug(f"{KD}+ts@int8_search"), 2)[0].unlink(), main,
         "is missing"),
        (lambda o, h: other_images(o, f"{BDKD}@int8_cpu", 1), main, "was evaluated on other test images"),
        (lambda o, h: ambiguous(h[0]), with_h4, "H4 needs exactly one @int8_cpu row whose label sets train.quantize=int8_cpu"),
        (lambda o, h: [other_images(h[1], f"{x}@int8_cpu", 2) for x in (QAT, CONTROL)], with_h4,
         "seed 2's test images are not OUT's (image digests other-images and test-images)"),
        (lambda o, h: not_learned(h[1]), with_h4, "not an INT8-aware file from the ranges learned in training"),
        (None, lambda o, h: [*with_h4(o, h), "--h4", str(h[0])], "seed 1 is also in --h4"),
        (None, lambda o, h: [str(o), "--json", str(tmp_path / "nowhere" / "d.json")], "nowhere/d.json: the folder"),
    ]
    for i, (breaks, make_args, needle) in enumerate(cases):
        case = tmp_path / f"case{i}"
        o, h = _copy((out, h4), case)
        if breaks:
            breaks(o, h)
        state = {p: p.read_bytes() for p in case.rglob("comparison.*")}
        capsys.readouterr()
        assert decision.main(make_args(o, h)) == 2, needle
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edgekd: error:") and needle in err[0], (needle, err)
        assert {p: p.read_bytes() for p in case.rglob("comparison.*")} == state  # nothing written
        assert not list(tmp_path.rglob("d.json"))


@pytest.mark.slow  # a Python process without torch
def test_the_decision_needs_no_torch(folders):
    out, h4 = folders
    script = textwrap.dedent(f"""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision"):
                    raise ImportError(f"blocked: {{name}}")

        sys.meta_path.insert(0, BlockTorch())
        from pathlib import Path
        from studies.cifar10_edge import decision
        _, d = decision.decide(Path({str(out)!r}), h4_folders=[Path({str(h4[0])!r})])
        print("torch-free", d["h1"]["verdict"].split(":")[0])
        """)
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and "torch-free holds" in proc.stdout, proc.stderr


def test_the_users_table_and_the_figure(folders, tmp_path):
    """Every recipe's three deployed files in one table, from compare's own summary; what the planted logits
    make of drift and confidence; H4's two files; the figure has a column per recipe and the QAT file."""
    out, h4 = _copy(folders, tmp_path)
    png, md = tmp_path / "rel.png", tmp_path / "d.md"
    assert decision.main([str(out), *_h4_args(h4), "--json", str(tmp_path / "d.json"), "--markdown", str(md),
                          "--figure", str(png)]) == 0
    d = json.loads((tmp_path / "d.json").read_text())["decision"]
    doc = json.loads((out / "comparison.json").read_text())
    t = d["table"]
    assert list(t) == ["CE", "CE+TS", "KD*", "KD*+TS", "BDKD*", "QAT-BDKD*", "control"]
    for name in ("CE", "KD*+TS", "BDKD*"):
        for f in FLAVOURS:
            assert t[name][f]["ece"] == doc["summary"][LAB.label(f"{name}@{f}")]["student"]["ece"]
        assert t[name]["search_speed_vs_fp32"]["mean"] == pytest.approx(1.1)
        assert t[name]["ece_noise_floor_int8_search"] == doc["summary"][LAB.label(f"{name}@int8_search")]["ece_noise_floor"]
    # Planted: CE's plain INT8 file is its FP32 logits sharpened 1.2x (drift up), CE+TS's is noise only.
    ce, ts = t["CE"]["vs_fp32"]["int8_cpu"], t["CE+TS"]["vs_fp32"]["int8_cpu"]
    assert ce["ece_drift"]["ci"][0] > 0.01 and abs(ts["ece_drift"]["mean"]) < abs(ce["ece_drift"]["mean"]) / 3
    assert ce["accuracy_drop"]["mean"] == pytest.approx(0, abs=1e-9)  # sharpening keeps every top-1
    planted = [(_planted(s)[0], _planted(s)[1]) for s in SEEDS]
    qat = [calibration.ece(r["QAT@int8_cpu"], y) for r, y in planted]
    drift = [abs(calibration.ece(r["QAT@int8_cpu"], y) - calibration.ece(r["BDKD*@fp32"], y)) for r, y in planted]
    assert t["QAT-BDKD*"]["int8_cpu"]["ece"]["mean"] == pytest.approx(np.mean(qat), abs=1e-3)  # float16 files
    assert t["QAT-BDKD*"]["abs_ece_drift_from_bdkd_fp32"]["mean"] == pytest.approx(np.mean(drift), abs=1e-3)
    # KD*'s student is 2x the logits of a calibrated z0: over-confident; BDKD*'s (zA) near calibrated.
    c = d["confidence"]
    assert c["KD*"]["confidence_minus_accuracy"]["mean"] > c["BDKD*"]["confidence_minus_accuracy"]["mean"] + 0.05
    assert "teacher" not in c["CE"] and c["KD*"]["teacher"]["ece"]["n"] == 3
    text = md.read_text()
    assert "| CE: the student alone, cross-entropy |" in text and "| QAT-BDKD*:" in text
    assert list(d["reliability"]) == [f"{n} searched INT8" for n in ("CE", "CE+TS", "KD*", "KD*+TS", "BDKD*")] \
        + ["QAT-BDKD* INT8 (learned ranges)"]
    pooled = [(r["KD*@int8_search"], y) for r, y in planted]
    assert d["reliability"]["KD* searched INT8"]["ece"] == pytest.approx(
        calibration.ece(np.concatenate([z for z, _ in pooled]), np.concatenate([y for _, y in pooled])), abs=1e-3)
    from PIL import Image
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 3 * im.size[1]


def test_a_bad_figure_path_writes_nothing(folders, tmp_path):
    out, _ = _copy(folders, tmp_path)
    before = (out / "comparison.json").read_bytes()
    assert decision.main([str(out), "--figure", str(tmp_path / "no" / "rel.png")]) == 2
    assert decision.main([str(out), "--figure", str(tmp_path)]) == 2  # a folder
    assert (out / "comparison.json").read_bytes() == before
    png = tmp_path / "rel.png"
    assert decision.main([str(out), "--kd", "kd:temperature=9", "--figure", str(png)]) == 2
    assert not png.exists() and (out / "comparison.json").read_bytes() == before
