"""train.channels_last, train.compile and train.amp: what `auto` resolves to on this hardware and why
(the run's first printed line, summary.json's speed_settings), and the autocast context the trainer
steps in. The choice depends only on the recipe and the hardware, never on timings taken during the
run, so a fixed seed and thread count still give the same run.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from dataclasses import dataclass

import torch

from edgekd.errors import RecipeError
from edgekd.recipe import Recipe

# torch.cpu.get_capabilities() names: x86 AVX512-BF16 and AMX-BF16, Arm BF16 and SVE-BF16.
_CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions. Without them torch emulates
    bf16 in fp32 and autocast only adds conversions (slower than plain fp32)."""
    probe = getattr(torch.cpu, "get_capabilities", None)
    if probe is not None:
        caps = probe()
        return any(caps.get(name) is True for name in _CPU_BF16_FEATURES)
    # Older torch: its private x86 check, or no bf16 (the safe answer: fp32 training).
    old_probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(old_probe and old_probe())


# Values of ONEDNN_MAX_CPU_ISA (and its old name DNNL_MAX_CPU_ISA) that still let oneDNN use bf16
# instructions; any other cap (SSE41, AVX2, AVX512_CORE, AVX512_CORE_VNNI...) makes it emulate them.
_BF16_ISA_WORDS = ("ALL", "DEFAULT", "BF16", "AMX", "FP16", "AVX10")


def bf16_kept_out() -> str | None:
    """The environment setting that keeps this process's kernels off bf16 instructions, if one does:
    oneDNN capped below AVX512_CORE_BF16, or ATen's kernels capped at AVX2 (both are what a
    user sets to reproduce another CPU's numbers). auto then trains fp32 as on such a CPU."""
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in ("default", "avx2"):
        return f"ATEN_CPU_CAPABILITY={aten}"
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        isa = os.environ.get(var, "").strip().upper()
        if isa and not any(word in isa for word in _BF16_ISA_WORDS):
            return f"{var}={isa}"
    return None


def auto_amp(device: torch.device) -> tuple[torch.dtype | None, str]:
    """What train.amp: auto picks on `device`, and why: one rule, so the choice and the reason the run
    prints cannot disagree."""
    if device.type == "cuda":
        return torch.bfloat16, "auto: bf16 on cuda"
    if device.type != "cpu":
        return None, f"auto: fp32 on {device.type}"
    if not cpu_has_bf16():
        return None, "auto: this CPU has no bf16 instructions"
    kept = bf16_kept_out()
    if kept:
        return None, f"auto: {kept} keeps the CPU's bf16 instructions out of use"
    if not AUTO_CPU_BF16:
        return None, "auto: bf16 not faster on CPUs"
    return torch.bfloat16, "auto: the CPU has bf16 instructions"


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "auto":
        return auto_amp(device)[0]
    if device.type != "cuda":
        if mode == "fp16":
            raise RecipeError("train.amp: fp16 needs a CUDA device; use off, auto or (on a CPU with bf16) bf16")
        if mode == "bf16":
            if device.type != "cpu" or not cpu_has_bf16():
                where = "this CPU has no bf16 instructions" if device.type == "cpu" else f"the device is {device.type}"
                raise RecipeError(f"train.amp: bf16 needs a CUDA device or a CPU with bf16 instructions "
                                  f"(AVX512-BF16, AMX or Arm BF16), but {where}; use off or auto")
            return torch.bfloat16
        return None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision at dtype on device, or nothing when dtype is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# -- train.channels_last / train.compile / train.amp: auto ----------------------------------------
# What `auto` picks, in one place. The figures come from benchmarks/bench_cpu_settings.py
# (docs/performance.md, "CPU training settings", has the command and the table); when a new
# measurement says otherwise, change them here. The choice depends only on the recipe and the
# hardware, never on timings taken during the run, so a fixed seed and thread count still
# give the same run.


def compile_break_even_steps(compile_seconds: float, eager_img_s: float, compiled_img_s: float,
                             batch_size: int) -> int | None:
    """Optimizer steps after which torch.compile has repaid its compile time: the compile
    seconds over the seconds each compiled step saves (a batch at the eager rate minus a batch
    at the compiled rate; i.e. step seconds x (1 - 1/speed-up)). None if compiled steps are
    no faster: it never repays."""
    saved = batch_size / eager_img_s - batch_size / compiled_img_s
    return math.ceil(compile_seconds / saved) if saved > 0 else None


# The figures below: benchmarks/bench_cpu_settings.py, 2026-11-29 04:18-04:30 UTC on a quiet 2-core
# AMD EPYC (AVX512-BF16), torch 2.14.1, batch 128, medians of 5 rounds (results/bench-cpu-settings.json).
#
# channels_last (NHWC) convolutions: 1.40x (resnet20 -> resnet8, 451 vs 322 img/s) and 1.49x
# (resnet18 -> mobilenet_v2, 31.9 vs 21.4 img/s) training images/s over NCHW; on CUDA it is the
# usual layout for convnets (tensor cores).
AUTO_CHANNELS_LAST = {"cpu": True, "cuda": True}

# torch.compile under auto: on when the run's optimizer steps (per process) reach the
# break-even. The resnet20 -> resnet8 pair compiled in 37 s and then ran 1.01x channels_last
# (456 vs 451 img/s): 12,909 steps to repay. resnet18 -> mobilenet_v2 repays after 164 (67 s,
# 1.11x), but the constant takes the pair that needs the most steps, so auto never compiles a
# run that would not repay. CUDA: None (never under auto) until benchmarks/gpu_check.py's
# compiled vs eager figures give a break-even there.
AUTO_COMPILE_MIN_STEPS: dict[str, int | None] = {
    "cpu": compile_break_even_steps(compile_seconds=37.12611, eager_img_s=451.25729, compiled_img_s=455.87971,
                                    batch_size=128),
    "cuda": None,
}

# bf16 autocast (+ channels_last) on a CPU with bf16 instructions: 2.09x (resnet20 -> resnet8) and
# 3.08x (resnet18 -> mobilenet_v2) fp32 NCHW, 1.49x and 2.06x channels_last in fp32; short real
# runs ended with the same student accuracy and ECE within their spread over 3 seeds. So auto
# trains in bf16 wherever cpu_has_bf16(); CPUs without the instructions would emulate it in fp32
# (slower), so they stay fp32.
AUTO_CPU_BF16 = True


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run on device here (None if it can): its Python support,
    and the code generator inductor needs (a C++ compiler on the CPU, Triton on CUDA)."""
    try:
        from torch._dynamo import is_dynamo_supported
    except ImportError:
        return f"torch {torch.__version__} has no torch.compile"
    if not is_dynamo_supported():
        return f"torch {torch.__version__} does not support torch.compile on Python {platform.python_version()}"
    try:
        if device.type == "cuda":
            from torch.utils._triton import has_triton
            return None if has_triton() else "torch.compile on CUDA needs Triton, which is not installed"
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
    except ImportError:
        return None  # the check moved in this torch; the compile itself will say what is missing
    except Exception:  # noqa: BLE001 - inductor's InvalidCxxCompiler and kin
        return "torch.compile on the CPU needs a C++ compiler (g++, or $CXX), and none was found"
    return None


@dataclass(frozen=True)
class SpeedSettings:
    """What train.channels_last, train.compile and train.amp resolved to for a run, and why
    (summary.json's speed_settings, and the run's first printed line)."""

    channels_last: bool
    compile: bool
    amp_dtype: torch.dtype | None
    reasons: dict[str, str]  # channels_last / compile / amp -> why

    @property
    def amp(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in (("channels_last", self.channels_last), ("compile", self.compile), ("amp", self.amp)):
            out[key], out[f"{key}_reason"] = value, self.reasons[key]
        return out

    def line(self) -> str:
        on = {True: "on", False: "off"}
        return (f"speed settings: channels_last {on[self.channels_last]} ({self.reasons['channels_last']}), "
                f"compile {on[self.compile]} ({self.reasons['compile']}), amp {self.amp} ({self.reasons['amp']})")


def resolve_speed_settings(recipe: Recipe, device: torch.device, total_steps: int) -> SpeedSettings:
    """Resolve train.channels_last, train.compile and train.amp for a run of total_steps optimizer
    steps (per process) on device. An explicit true / false / dtype is kept (a forced setting that
    cannot run is a RecipeError); auto follows the AUTO_* constants above."""
    t = recipe.train
    kind = device.type
    reasons: dict[str, str] = {}
    if t.quantize is not None:
        # The recipe refuses a forced setting with quantize; auto is off for all three.
        why = f"auto: train.quantize {t.quantize} trains the captured graph in fp32"
        return SpeedSettings(False, False, None, {key: why if getattr(t, key) == "auto" else "set in the recipe"
                                                  for key in ("channels_last", "compile", "amp")})
    amp_dtype = resolve_amp(t.amp, device)

    if t.channels_last == "auto":
        channels_last = AUTO_CHANNELS_LAST.get(kind, False)
        reasons["channels_last"] = f"auto: {'faster' if channels_last else 'not faster'} on {kind}"
    else:
        channels_last = t.channels_last
        reasons["channels_last"] = "set in the recipe"

    if t.compile is True:
        why_not = compile_unavailable(device)
        if why_not:
            raise RecipeError(f"train.compile: true, but {why_not}; use train.compile: auto or false")
        compile_on, reasons["compile"] = True, "set in the recipe"
    elif t.compile is False:
        compile_on, reasons["compile"] = False, "set in the recipe"
    else:
        min_steps = AUTO_COMPILE_MIN_STEPS.get(kind)
        if min_steps is None:
            compile_on, reasons["compile"] = False, f"auto: no measured break-even on {kind}"
        elif total_steps < min_steps:
            compile_on, reasons["compile"] = False, f"auto: run of {total_steps:,} steps < {min_steps:,} break-even"
        elif kind == "cpu" and amp_dtype is not None:
            # The break-even was measured in fp32; compile with bf16 autocast on a CPU was not.
            compile_on, reasons["compile"] = False, "auto: compile measured in fp32 only, this run trains bf16"
        else:
            why_not = compile_unavailable(device)
            compile_on = why_not is None
            reasons["compile"] = (f"auto: run of {total_steps:,} steps >= {min_steps:,} break-even"
                                  if compile_on else f"auto: {why_not}")

    reasons["amp"] = auto_amp(device)[1] if t.amp == "auto" else "set in the recipe"
    return SpeedSettings(channels_last, compile_on, amp_dtype, reasons)
