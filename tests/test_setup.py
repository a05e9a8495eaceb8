"""train.deterministic: the process-wide settings it applies on each device kind; train.amp on the CPU.

CUDA's flags can be set and read back without a GPU, so this runs on the CPU."""

import pytest
import torch

from edgekd.training.setup import apply_determinism
from edgekd.training.speed import bf16_kept_out, cpu_has_bf16, resolve_amp
from edgekd.errors import RecipeError

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _flags() -> dict:
    return {
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
    }


@pytest.fixture(autouse=True)
def restore_flags(monkeypatch):
    """The settings are global to the process: put them back for the other tests."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _flags()
    yield
    torch.backends.cudnn.deterministic = before["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = before["cudnn_benchmark"]
    torch.use_deterministic_algorithms(before["deterministic_algorithms"], warn_only=before["warn_only"])


def test_deterministic_on_cuda_picks_reproducible_kernels(monkeypatch):
    import os

    torch.backends.cudnn.benchmark = True
    apply_determinism(True, CUDA)
    assert _flags() == {"cudnn_deterministic": True, "cudnn_benchmark": False, "deterministic_algorithms": True,
                        "warn_only": True}
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own choice is kept
    apply_determinism(True, CUDA)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_not_deterministic_on_cuda_lets_cudnn_benchmark():
    import os

    apply_determinism(True, CUDA)  # a previous run in this process (edgekd compare) asked for determinism
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG")
    apply_determinism(False, CUDA)
    flags = _flags()
    assert flags["cudnn_benchmark"] is True
    assert flags["cudnn_deterministic"] is False and flags["deterministic_algorithms"] is False
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


@pytest.mark.parametrize("deterministic", [True, False])
def test_the_cpu_needs_no_settings(deterministic):
    before = _flags()
    apply_determinism(deterministic, CPU)  # CPU kernels are deterministic for a fixed thread count
    assert _flags() == before


_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
_ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@pytest.fixture(autouse=True)
def no_isa_cap(monkeypatch):
    """These tests are about the CPU probe and the constants; the suite also runs with the kernel paths
    capped (docs/reliability.md), which test_an_isa_cap_keeps_auto_in_fp32 covers on its own."""
    for var in _ISA_CAPS:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("env, kept_out", [
    ({}, None), ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "ONEDNN_MAX_CPU_ISA=AVX2"),
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, "ONEDNN_MAX_CPU_ISA=AVX512_CORE"),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, None), ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, None),
    ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, "DNNL_MAX_CPU_ISA=AVX512_CORE_VNNI"),
    ({"ATEN_CPU_CAPABILITY": "avx2"}, "ATEN_CPU_CAPABILITY=avx2"), ({"ATEN_CPU_CAPABILITY": "avx512"}, None),
])
def test_an_isa_cap_keeps_auto_in_fp32(monkeypatch, env, kept_out):
    """A user who caps torch's kernels (to get another CPU's numbers) gets what auto picks on that CPU."""
    caps = {**torch.cpu.get_capabilities(), **{name: True for name in _BF16_FEATURES}}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert bf16_kept_out() == kept_out
    assert resolve_amp("auto", CPU) is (None if kept_out else torch.bfloat16)
    assert resolve_amp("bf16", CPU) is torch.bfloat16  # asked for by name: as asked
    s = resolve_speed_settings(_recipe(), CPU, total_steps=1)
    assert s.reasons["amp"] == (f"auto: {kept_out} keeps the CPU's bf16 instructions out of use" if kept_out
                                else "auto: the CPU has bf16 instructions")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_on_the_cpu_follows_the_cpu_capability_probe(monkeypatch, has_bf16):
    """train.amp: bf16 trains in bf16 autocast on a CPU with bf16 instructions and is refused
    on one without (only torch's capability probe is replaced); fp16 needs CUDA either way."""
    real = dict(torch.cpu.get_capabilities()) if hasattr(torch.cpu, "get_capabilities") else {}
    caps = {**real, **{name: has_bf16 for name in _BF16_FEATURES}}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    assert cpu_has_bf16() is has_bf16
    if has_bf16:
        assert resolve_amp("bf16", CPU) is torch.bfloat16
    else:
        with pytest.raises(RecipeError, match="train.amp: bf16 needs a CUDA device or a CPU with bf16 instructions"):
            resolve_amp("bf16", CPU)
    assert resolve_amp("auto", CPU) is (torch.bfloat16 if has_bf16 else None)  # AUTO_CPU_BF16 is on
    assert resolve_amp("off", CPU) is None
    with pytest.raises(RecipeError, match="train.amp: fp16 needs a CUDA device"):
        resolve_amp("fp16", CPU)


# -- train.channels_last / train.compile / train.amp: auto (resolve_speed_settings) ----------------

from edgekd.training import speed as setup_mod  # noqa: E402
from edgekd.training.speed import (  # noqa: E402
    AUTO_COMPILE_MIN_STEPS, compile_break_even_steps, compile_unavailable, resolve_speed_settings)
from edgekd.recipe import load_recipe  # noqa: E402

QUICKSTART = "recipes/quickstart.yaml"


def _recipe(*overrides: str):
    from pathlib import Path

    return load_recipe(Path(__file__).resolve().parents[1] / QUICKSTART, list(overrides))


def test_compile_break_even_is_compile_time_over_seconds_saved_per_step():
    # 100 images a step: 1.0 s eager, 0.5 s compiled, so 0.5 s saved a step; 10 s of compiling = 20 steps.
    assert compile_break_even_steps(10.0, eager_img_s=100.0, compiled_img_s=200.0, batch_size=100) == 20
    assert compile_break_even_steps(10.0, 100.0, 201.0, 100) == 20  # rounded up: 19.9 steps do not repay it
    assert compile_break_even_steps(10.0, 100.0, 100.0, 100) is None  # no faster: never repays
    assert compile_break_even_steps(10.0, 100.0, 90.0, 100) is None
    # The CPU constant: benchmarks/bench_cpu_settings.py's resnet20 -> resnet8 pair (37.1 s of compiling,
    # 451.3 img/s channels_last, 455.9 compiled, batch 128; results/bench-cpu-settings.json).
    assert AUTO_COMPILE_MIN_STEPS["cpu"] == 12909 and AUTO_COMPILE_MIN_STEPS["cuda"] is None


def test_auto_on_the_cpu_follows_the_constants():
    r = _recipe()
    below = resolve_speed_settings(r, CPU, total_steps=12908)
    bf16 = cpu_has_bf16()  # AUTO_CPU_BF16 is on: bf16 wherever the CPU has the instructions
    assert below.to_dict() == {
        "channels_last": True, "channels_last_reason": "auto: faster on cpu",
        "compile": False, "compile_reason": "auto: run of 12,908 steps < 12,909 break-even",
        "amp": "bf16" if bf16 else "off",
        "amp_reason": "auto: the CPU has bf16 instructions" if bf16 else "auto: this CPU has no bf16 instructions",
    }
    assert below.amp_dtype is (torch.bfloat16 if bf16 else None)
    assert below.line().startswith("speed settings: channels_last on (auto: faster on cpu), compile off (auto: run "
                                   "of 12,908 steps < 12,909 break-even), amp ")
    # At the break-even: compile in fp32 (what was measured), never with bf16 autocast on a CPU.
    at = resolve_speed_settings(_recipe("train.amp=off"), CPU, total_steps=12909)
    why_not = compile_unavailable(CPU)
    assert at.compile is (why_not is None)
    assert at.reasons["compile"] == ("auto: run of 12,909 steps >= 12,909 break-even" if why_not is None
                                     else f"auto: {why_not}")
    if bf16:
        long_bf16 = resolve_speed_settings(r, CPU, total_steps=10**6)
        assert (long_bf16.compile, long_bf16.amp) == (False, "bf16")
        assert long_bf16.reasons["compile"] == "auto: compile measured in fp32 only, this run trains bf16"


def test_forced_settings_are_kept():
    r = _recipe("train.channels_last=false", "train.compile=false", "train.amp=off")
    s = resolve_speed_settings(r, CPU, total_steps=10**6)
    assert (s.channels_last, s.compile, s.amp) == (False, False, "off")
    assert set(s.reasons.values()) == {"set in the recipe"}
    assert resolve_speed_settings(_recipe("train.channels_last=true"), CPU, 1).channels_last is True


def test_auto_on_cuda_keeps_compile_off_until_measured():
    s = resolve_speed_settings(_recipe(), CUDA, total_steps=10**6)  # resolving touches no GPU
    assert (s.channels_last, s.compile, s.amp) == (True, False, "bf16")
    assert s.reasons["compile"] == "auto: no measured break-even on cuda"


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cpu_bf16_under_auto_needs_the_constant_and_the_instructions(monkeypatch, has_bf16):
    """AUTO_CPU_BF16 (on: bf16 measured 2-3x fp32 on this kind of CPU) is the switch the benchmark's
    figures set; off, auto trains fp32 on every CPU."""
    caps = {**torch.cpu.get_capabilities(), **{name: has_bf16 for name in _BF16_FEATURES}}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    assert setup_mod.AUTO_CPU_BF16 is True
    s = resolve_speed_settings(_recipe(), CPU, total_steps=1)
    assert s.amp == ("bf16" if has_bf16 else "off")
    assert s.reasons["amp"] == ("auto: the CPU has bf16 instructions" if has_bf16
                                else "auto: this CPU has no bf16 instructions")
    monkeypatch.setattr(setup_mod, "AUTO_CPU_BF16", False)
    s = resolve_speed_settings(_recipe(), CPU, total_steps=1)
    assert s.amp == "off" and s.reasons["amp"] == ("auto: bf16 not faster on CPUs" if has_bf16
                                                   else "auto: this CPU has no bf16 instructions")


def test_compile_without_a_cpp_compiler():
    """Inductor's own compiler search, pointed at a compiler that does not exist: forced is refused
    in one line, auto falls back to eager and says why."""
    from torch._inductor import config

    why = "torch.compile on the CPU needs a C++ compiler (g++, or $CXX), and none was found"
    with config.patch({"cpp.cxx": ("edgekd-no-such-c++",)}):  # torch's own way to set it for a while
        assert compile_unavailable(CPU) == why
        with pytest.raises(RecipeError) as e:
            resolve_speed_settings(_recipe("train.compile=true"), CPU, total_steps=1)
        assert str(e.value) == f"train.compile: true, but {why}; use train.compile: auto or false"
        s = resolve_speed_settings(_recipe("train.amp=off"), CPU, total_steps=10**6)
        assert s.compile is False and s.reasons["compile"] == f"auto: {why}"
