"""Everything a run needs before its first step: device, the speed settings
(mixed precision, channels_last, torch.compile), determinism, seeds, data, models,
the method and the optimizers. Nothing here writes a file, so a bad recipe fails
before a run directory exists."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import random
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn

from edgekd.data import DataModule, Normalization, build_data, resolve_storage
from edgekd.data.loader import batches_per_epoch, check_workers
from edgekd.distill import distributed
from edgekd.distill.distributed import SINGLE, Dist
from edgekd.distill import tensorboard_log
from edgekd.distill.methods import Distiller, get_method
from edgekd.data.sources import source_shape
from edgekd.distill.nets import build_nets
from edgekd.errors import DataError, MissingDependencyError, RecipeError
from edgekd.models import user
from edgekd.models.pretrained import InitReport
from edgekd.models.timm_models import is_timm, pretrained_input
from edgekd.recipe import OptimConfig, Recipe


@dataclass
class Setup:
    """Everything built from a recipe before any file is written."""

    recipe: Recipe
    data: DataModule
    teacher: nn.Module
    student: nn.Module
    method: Distiller
    device: torch.device
    speed: SpeedSettings
    dist: Dist = SINGLE
    # What student.init / teacher.init: backbone loaded, by role (full loads leave none).
    init_reports: dict[str, InitReport] = field(default_factory=dict)
    # Why data.storage: auto chose what it chose (None when the recipe set it).
    storage_note: str | None = None

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.speed.amp_dtype

    @property
    def channels_last(self) -> bool:
        return self.speed.channels_last


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MissingDependencyError(f"train.device is {name} but no CUDA GPU is visible; use train.device: cpu or auto")
        idx = int(name.split(":")[1]) if ":" in name else 0
        if idx >= torch.cuda.device_count():
            raise MissingDependencyError(f"train.device is {name} but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device(name)


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


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        if mode == "auto":
            usable = cpu_has_bf16() and bf16_kept_out() is None
            return torch.bfloat16 if AUTO_CPU_BF16 and device.type == "cpu" and usable else None
        if mode == "fp16":
            raise RecipeError("train.amp: fp16 needs a CUDA device; use off, auto or (on a CPU with bf16) bf16")
        if mode == "bf16":
            if device.type != "cpu" or not cpu_has_bf16():
                where = "this CPU has no bf16 instructions" if device.type == "cpu" else f"the device is {device.type}"
                raise RecipeError(f"train.amp: bf16 needs a CUDA device or a CPU with bf16 instructions "
                                  f"(AVX512-BF16, AMX or Arm BF16), but {where}; use off or auto")
            return torch.bfloat16
        return None
    return {"off": None, "auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


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
# (slower), so they stay fp32. (Issue 15's earlier probe had measured 0.77-1.00x.)
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

    if t.amp != "auto":
        reasons["amp"] = "set in the recipe"
    elif kind == "cuda":
        reasons["amp"] = "auto: bf16 on cuda"
    elif not cpu_has_bf16():
        reasons["amp"] = "auto: this CPU has no bf16 instructions"
    elif bf16_kept_out():
        reasons["amp"] = f"auto: {bf16_kept_out()} keeps the CPU's bf16 instructions out of use"
    else:
        reasons["amp"] = "auto: the CPU has bf16 instructions" if amp_dtype else "auto: bf16 not faster on CPUs"
    return SpeedSettings(channels_last, compile_on, amp_dtype, reasons)


def apply_determinism(deterministic: bool, device: torch.device) -> None:
    """Make training on `device` bit-reproducible (train.deterministic: true) or fast.

    CPU: nothing to set. PyTorch's CPU kernels already give the same result run after
    run for a fixed seed and a fixed thread count (OMP_NUM_THREADS), either way.
    CUDA: true picks deterministic cuDNN and cuBLAS kernels (slower) and warns about
    any op that has none; false lets cuDNN time its kernels per input shape and keep
    the fastest, which is quicker but may round differently from run to run.
    These are process-wide settings, so both values set every flag.
    """
    if device.type != "cuda":
        return
    if deterministic:
        # cuBLAS reads this when it creates its handle (at the first matmul): it must
        # be set before any CUDA work. A value the user chose is kept.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def net_normalization(recipe: Recipe) -> tuple[Normalization | None, int | None]:
    """data.normalize -> (a net's own input statistics or None for the data's, that net's input size).
    auto: the teacher's, else the student's, for a timm net whose weights come from a checkpoint."""
    choice = recipe.data.normalize
    if choice == "data":
        return None, None
    for role in ("teacher", "student") if choice == "auto" else (choice,):
        net = getattr(recipe, role)
        if not is_timm(net.arch):
            if choice != "auto":
                raise RecipeError(f"data.normalize: {role} takes a timm {role}'s pretrained_cfg, but {role}.arch is "
                                  f"{net.arch}; allowed: a timm/<name> {role}, or data.normalize data or auto")
            continue
        if choice == "auto" and not net.checkpoint:
            continue  # fresh weights learn whatever statistics the data has
        cfg = pretrained_input(net.arch)
        return Normalization(f"{net.arch} pretrained_cfg", cfg["mean"], cfg["std"], cfg["crop_pct"]), cfg["image_size"]
    return None, None


def join_process_group(recipe: Recipe, dist: Dist) -> None:
    """Under torchrun, join the process group on this rank's device (no-op otherwise)."""
    distributed.init(dist, distributed.local_device(dist, resolve_device(recipe.train.device)))


def prepare(recipe: Recipe, dist: Dist = SINGLE, modules: Mapping[str, nn.Module] | None = None) -> Setup:
    """Build data, models and the method; raise a clean error for any bad input, write nothing.
    The nets and their checkpoints are checked before the data is read (nets.build_nets: every
    problem at once). Under torchrun (dist.enabled) this also joins the process group. `modules`
    maps "teacher" and/or "student" to user modules (models/user.py), used (and trained) in place
    of building the recipe's arch; they keep their weights unless the recipe names a checkpoint (and init)."""
    modules = dict(modules or {})
    for role in ("teacher", "student"):
        user.require_module(role, getattr(recipe, role).arch, modules.get(role))
    d = recipe.data
    device = distributed.local_device(dist, resolve_device(recipe.train.device))
    resolve_amp(recipe.train.amp, device)  # a forced precision this device lacks fails before the data loads
    per_rank = distributed.per_rank_batch(d.batch_size, dist)
    if dist.enabled and recipe.train.sync_bn and device.type != "cuda":
        # torch's SyncBatchNorm runs on GPUs only; DDP would fail on every rank with a traceback.
        raise RecipeError(f"train.sync_bn: true needs CUDA devices (SyncBatchNorm runs on GPUs only), "
                          f"but this run trains on {device.type}; set train.sync_bn: false")
    method_cls = get_method(recipe.distill.method)
    tensorboard_log.require(recipe.train.log)
    normalization, cfg_size = net_normalization(recipe)
    image_size = d.image_size if d.image_size is not None else cfg_size
    shape = source_shape(d.name, d.root, image_size)
    apply_determinism(recipe.train.deterministic, device)  # before any CUDA work
    seed_everything(recipe.train.seed)  # the nets' fresh weights come from this seed
    nets = build_nets(recipe, shape, modules, method_cls.trains_teacher)
    teacher, student, init_reports = nets.teacher, nets.student, nets.init_reports
    if recipe.train.quantize is not None:  # captured before the data loads: a net it cannot take fails now
        if dist.enabled:
            raise RecipeError("train.quantize runs in one process (INT8-aware training under torchrun was not "
                              "measured); run edgekd distill without torchrun")
        from edgekd.distill import quantize

        student = quantize.prepare(student, recipe.train.quantize, shape.in_channels, shape.image_size,
                                   recipe.student.arch)
    storage, why = resolve_storage(d.storage, d.name, d.root, shape.image_size, shape.in_channels)
    if storage == "stream" or d.loader == "host":
        check_workers(d.workers)
    data = build_data(
        d.name, d.root, image_size=image_size, **d.split_args(), subset=d.subset, split_seed=d.split_seed,
        download=d.download, cache_dir=d.cache_dir, storage=storage, normalization=normalization,
    )
    if (data.num_classes, data.in_channels, data.image_size) != (shape.num_classes, shape.in_channels, shape.image_size):
        raise DataError(f"data.root {d.root} gave {data.num_classes} classes of {data.in_channels}-channel "
                        f"{data.image_size}px images, but its folders announced {shape.num_classes} classes of "
                        f"{shape.in_channels}-channel {shape.image_size}px; set data.image_size")
    if recipe.train.eval_split == "tune" and (data.tune is None or len(data.tune.labels) == 0):
        raise RecipeError("train.eval_split is tune but the tune split is empty; set data.tune_fraction or data.tune_size")
    total_steps = recipe.train.epochs * batches_per_epoch(len(data.train.labels), per_rank, dist.world_size)
    speed = resolve_speed_settings(recipe, device, total_steps)
    if speed.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    teacher.to(device)
    student.to(device)
    distributed.init(dist, device)
    # The method calls the wrapped nets (DDP, compiled); state, evaluation and
    # checkpoints use the raw modules, so checkpoint keys never carry "module." or
    # "_orig_mod.". A frozen teacher (kd) has no gradients to all-reduce.
    sync_bn = recipe.train.sync_bn
    t_run = distributed.wrap(teacher, dist, device, sync_bn) if method_cls.trains_teacher else teacher
    s_run = distributed.wrap(student, dist, device, sync_bn)
    if speed.compile:
        t_run, s_run = torch.compile(t_run), torch.compile(s_run)
    method = method_cls(t_run, s_run, recipe.distill, label_smoothing=recipe.optim.label_smoothing)
    if dist.enabled:  # same initial weights everywhere (DDP checks), own dropout stream per rank
        seed_everything(recipe.train.seed + 1_000_003 * dist.rank)
    storage_note = f"data.storage auto: {storage} ({why})" if d.storage == "auto" and storage == "stream" else None
    return Setup(recipe, data, teacher, student, method, device, speed, dist, init_reports, storage_note)


def make_optimizer(params, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    # Fused kernels where the device supports them; foreach elsewhere.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, **fast)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fast)
