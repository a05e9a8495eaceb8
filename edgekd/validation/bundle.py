"""Find, read and verify an export bundle (see export/README.md). Torch-free.

A bundle is trusted only as far as its manifest.json is consistent: every file's
sha256 is checked before anything is loaded, and the manifest's own entries must
agree with each other (and, once a model is loaded, with the model: see
`check_model_io`). Anything wrong is a one-line BundleError.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekd.arguments import TEXT, check_argument
from edgekd.contracts import CPU_ONLY_PRECISIONS, PRECISIONS, BundleManifest
from edgekd.errors import BundleError
from edgekd.files import sha256_file
from edgekd.validation.gate import CHECKS as GATE_CHECKS
from edgekd.validation.gate import THRESHOLD as GATE_THRESHOLD

# Any precision but the CPU-only ones may be an engine (export builds fp16 and int8 only).
ENGINE_PRECISIONS = tuple(p for p in PRECISIONS if p not in CPU_ONLY_PRECISIONS)
# Command-line names, in the order results are shown: the FP32 ONNX file comes first
# because every other format is compared against it.
FORMAT_ORDER = ("fp32", "fp16", "int8", "int8_cpu", "engine_fp16", "engine_int8", "engine_fp32")
ENGINE_PREFIX = "engine_"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Bundle:
    """A checked bundle (what `edgekd.export` returns, and what validate reads).

    path: the bundle folder. manifest: its manifest.json (export/README.md describes it;
    manifest.files[name], also manifest["files"][name], holds each file's export-time metrics,
    drift and parity against PyTorch). formats: format name ("fp32", "int8_cpu", "engine_fp16",
    ...) -> file name, FP32 first (the order validate reports them in).
    """

    path: Path
    manifest: BundleManifest = field(repr=False)
    formats: dict[str, str]  # format name -> file name, in FORMAT_ORDER

    @property
    def class_names(self) -> list[str]:
        """The class names, in the order of the model's outputs."""
        return self.manifest.class_names

    @property
    def num_classes(self) -> int:
        """The number of classes (outputs)."""
        return self.manifest.num_classes

    @property
    def preprocessing(self) -> dict:
        """How an image becomes the model's input (resize, mean, std, ...: the manifest's preprocessing)."""
        return self.manifest.preprocessing

    @property
    def image_size(self) -> int:
        """The input's height and width, in pixels."""
        return self.manifest.image_size

    @property
    def channels(self) -> int:
        """The input's channels (1 or 3)."""
        return self.manifest.channels

    @property
    def gate(self) -> dict:
        """The recipe's validate: thresholds, recorded at export (validate's defaults)."""
        return self.manifest.gate

    @property
    def reference(self) -> dict:
        """PyTorch's metrics on the run's val split for the network it trained (runtime, split, n, model,
        format: the file that is that network, accuracy, ece, ...)."""
        return self.manifest.reference

    @property
    def temperature(self) -> float | None:
        """The temperature inside every file (export --temperature), or None."""
        return self.manifest.temperature_value

    def _file_name(self, fmt: str) -> str:
        check_argument("Bundle", "fmt", fmt, TEXT)
        if fmt not in self.formats:
            raise BundleError(f"format {fmt!r} is not in bundle {self.path}; it has {', '.join(self.formats)}")
        return self.formats[fmt]

    def file(self, fmt: str) -> Path:
        """The path of format `fmt`'s file."""
        return self.path / self._file_name(fmt)

    def entry(self, fmt: str) -> dict:
        """Format `fmt`'s manifest entry: sha256, bytes, and for an exported ONNX file its metrics,
        drift and parity against PyTorch on the val split."""
        name = self._file_name(fmt)  # a bad format name is refused before the manifest is read
        return self.manifest.files[name]

    def float_nodes(self, fmt: str) -> list[str] | None:
        """The nodes an INT8 file (or the engine built from it) keeps in float: export's
        excluded_nodes, the INT8 search's fallbacks among them. None for other formats."""
        entry = self.entry(fmt)
        source = self.manifest.files.get(entry.get("from"), {}) if "quantization" not in entry else entry
        quantization = source.get("quantization")
        return None if quantization is None else list(quantization["excluded_nodes"])


def is_engine(fmt: str) -> bool:
    return fmt.startswith(ENGINE_PREFIX)


# ---------------------------------------------------------------- finding and loading


def find_bundle(root: Path = Path("export"), log: Callable[[str], Any] = print) -> Path:
    """The complete bundle under `root` whose manifest.json was written last. Newer incomplete
    ones (BundleManifest.incomplete) are skipped, each with a one-line notice."""
    # Hidden folders are half-written bundles (atomic_dir's temp names) or backups.
    found = [d for d in root.iterdir() if not d.name.startswith(".") and BundleManifest.is_in(d)] \
        if root.is_dir() else []
    if not found:
        raise BundleError(f"no bundle under {root}/ (a folder with {BundleManifest.FILE}); run edgekd export first "
                          "or pass BUNDLE")
    for d in sorted(found, key=lambda d: BundleManifest.path_in(d).stat().st_mtime_ns, reverse=True):
        reason = BundleManifest.incomplete_reason(d)
        if reason is None:
            return d
        log(f"skipping {d}: incomplete ({reason}); name it to validate it anyway")
    raise BundleError(f"no complete bundle under {root}/: every one is incomplete; name one to validate it anyway, "
                      f"or export again")


def load_bundle(path: Path | None, log: Callable[[str], Any] = print) -> Bundle:
    """Read and check manifest.json, then verify every file's sha256. Loads no model."""
    if path is None:
        path = find_bundle(log=log)
    path = Path(path)
    log(f"validating bundle {path}")
    if not path.is_dir():
        raise BundleError(f"bundle folder {path} does not exist" if not path.exists() else f"{path} is not a folder")
    manifest = BundleManifest.read(path)
    if manifest.incomplete:
        log(f"note: {path} is incomplete ({manifest.incomplete}): validating the files it has")
    formats = check_manifest(manifest)
    verify_files(path, manifest.files)
    return Bundle(path, manifest, formats)


# ---------------------------------------------------------------- consistency of the manifest


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise BundleError(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1


def check_manifest(m: BundleManifest) -> dict[str, str]:
    """Check that the manifest's entries agree with each other; return format -> file name."""
    where = BundleManifest.FILE
    model, inp, out, pre = m.model, m.input, m.output, m.preprocessing
    for key, section in m.sections().items():
        _require(isinstance(section, dict), f"{where}: {key} must be an object")
    c = model.get("num_classes")
    _require(_is_int(c) and c >= 2, f"{where}: model.num_classes must be an integer >= 2, got {c!r}")
    names = m.class_names
    _require(isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names),
             f"{where}: class_names must be a list of distinct strings")
    _require(len(names) == c, f"{where}: {len(names)} class_names but model.num_classes is {c}")

    shape = inp.get("shape")
    _require(isinstance(shape, list) and len(shape) == 4 and all(_is_int(v) and v > 0 for v in shape[1:]),
             f"{where}: input.shape must be [batch, C, H, W], got {shape!r}")
    _require(isinstance(inp.get("name"), str) and isinstance(out.get("name"), str),
             f"{where}: input.name and output.name must be strings")
    _require(inp.get("dtype") == "float32" and inp.get("layout", "NCHW") == "NCHW",
             f"{where}: input must be float32 NCHW, got {inp.get('dtype')!r} {inp.get('layout')!r}")
    oshape = out.get("shape")
    _require(isinstance(oshape, list) and len(oshape) == 2 and oshape[1] == c,
             f"{where}: output.shape {oshape!r} disagrees with model.num_classes {c} (expected [batch, {c}])")
    _check_preprocessing(pre, shape[1], shape[2:], where)
    thresholds = m.gate
    for key in (*GATE_CHECKS, GATE_THRESHOLD):  # the thresholds the gate checks, by name, and the confidence
        v = thresholds.get(key)
        _require(v is None or _is_fraction(v), f"{where}: gate.{key} must be a fraction in [0, 1] or null, got {v!r}")
    t = m.temperature
    if t is not None:
        v = t.get("value") if isinstance(t, dict) else None
        _require(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                 f"{where}: temperature.value must be a number > 0, got {v!r}")
    ref = m.reference
    for key in ("accuracy", "ece"):
        _require(_is_fraction(ref.get(key)), f"{where}: reference.{key} must be a fraction in [0, 1], got {ref.get(key)!r}")
    return _check_files(m.files, where)


def _check_preprocessing(pre: dict, channels: int, hw: list[int], where: str) -> None:
    order = {"L": 1, "RGB": 3}.get(pre.get("channel_order"))
    _require(order == channels,
             f"{where}: preprocessing.channel_order {pre.get('channel_order')!r} disagrees with "
             f"input.shape's {channels} channels (L = 1, RGB = 3)")
    _require(pre.get("resize") == hw, f"{where}: preprocessing.resize {pre.get('resize')!r} disagrees with input H x W {hw}")
    _require(hw[0] == hw[1], f"{where}: input H x W {hw} is not square; edgekd models take square images")
    for key in ("mean", "std"):
        v = pre.get(key)
        _require(isinstance(v, list) and len(v) == channels and all(isinstance(x, (int, float)) for x in v),
                 f"{where}: preprocessing.{key} must list {channels} numbers, got {v!r}")
    _require(all(s > 0 for s in pre["std"]), f"{where}: preprocessing.std must be > 0, got {pre['std']}")
    _require(pre.get("interpolation") == "bilinear" and pre.get("layout") == "NCHW" and pre.get("dtype") == "float32",
             f"{where}: unsupported preprocessing (interpolation {pre.get('interpolation')!r}, layout "
             f"{pre.get('layout')!r}, dtype {pre.get('dtype')!r}); this edgekd does bilinear, NCHW, float32")
    scale = pre.get("scale")
    _require(isinstance(scale, float) and abs(scale - 1 / 255) < 1e-12,
             f"{where}: preprocessing.scale must be 1/255, got {scale!r}")


def _check_files(files: dict, where: str) -> dict[str, str]:
    formats: dict[str, str] = {}
    for name, e in files.items():
        # A name with a folder in it could point outside the bundle.
        _require(isinstance(name, str) and name == Path(name).name and name not in ("", ".", ".."),
                 f"{where}: file name {name!r} must be a plain file name inside the bundle")
        _require(isinstance(e, dict) and isinstance(e.get("sha256"), str) and _SHA256.match(e["sha256"]) is not None,
                 f"{where}: files.{name} needs a sha256 (64 lowercase hex digits)")
        _require(_is_int(e.get("bytes")) and e["bytes"] >= 0, f"{where}: files.{name}.bytes must be a byte count")
        kind = e.get("format")
        if kind not in ("onnx", "tensorrt"):
            continue  # int8_calibration.json and other side files: hashed, never run
        precision = e.get("precision")
        _require(precision in PRECISIONS,
                 f"{where}: {name} has precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
        _require(kind == "onnx" or precision in ENGINE_PRECISIONS,
                 f"{where}: {name} is a TensorRT engine with precision {precision!r}; engines are "
                 f"{', '.join(ENGINE_PRECISIONS)} ({precision} is an ONNX Runtime CPU format, TensorRT cannot build it)")
        q = e.get("quantization")
        _require(q is None or (isinstance(q, dict) and isinstance(q.get("excluded_nodes"), list)
                               and all(isinstance(n, str) for n in q["excluded_nodes"])),
                 f"{where}: files.{name}.quantization.excluded_nodes must be a list of node names")
        fmt = precision if kind == "onnx" else ENGINE_PREFIX + precision
        _require(fmt not in formats, f"{where}: {formats.get(fmt)} and {name} are both {fmt}")
        formats[fmt] = name
    _require(bool(formats), f"{where}: files lists no ONNX model or TensorRT engine")
    return {f: formats[f] for f in FORMAT_ORDER if f in formats}


def verify_files(root: Path, files: dict) -> None:
    """Every listed file must exist with the manifest's sha256: checked before any is loaded."""
    for name, e in files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{name} is listed in {BundleManifest.FILE} but missing from {root}")
        digest = sha256_file(path)
        if digest != e["sha256"]:
            size = path.stat().st_size
            sizes = f"; {size} bytes, manifest says {e['bytes']}" if size != e["bytes"] else ""
            raise BundleError(f"{name}: sha256 mismatch (manifest {e['sha256'][:4]}…, file {digest[:4]}…{sizes}): "
                              "the file was modified or truncated")


def check_model_io(bundle: Bundle, fmt: str, input_name: str, input_shape: list, output_name: str,
                   output_shape: list) -> None:
    """The loaded model must take and give what the manifest says (a hand-edited manifest would not)."""
    want_in, want_out = bundle.manifest.input, bundle.manifest.output
    # Dynamic axes come back as a string (ONNX Runtime), None or -1 (TensorRT): compare fixed axes only.
    def fixed(shape: list) -> list:
        return [v if _is_int(v) and v >= 0 else "dynamic" for v in shape]

    if input_name != want_in["name"] or fixed(input_shape)[1:] != want_in["shape"][1:] or len(input_shape) != 4:
        raise BundleError(
            f"{BundleManifest.FILE} says input {want_in['name']!r} {['batch'] + want_in['shape'][1:]} but "
            f"{bundle.formats[fmt]} takes {input_name!r} {fixed(input_shape)}: the manifest was edited or belongs to another model"
        )
    if output_name != want_out["name"] or len(output_shape) != 2 or fixed(output_shape)[1] != bundle.num_classes:
        raise BundleError(
            f"{BundleManifest.FILE} says output {want_out['name']!r} [batch, {bundle.num_classes}] but "
            f"{bundle.formats[fmt]} gives {output_name!r} {fixed(output_shape)}: the manifest was edited or belongs to another model"
        )


# ---------------------------------------------------------------- which formats to run


def float_weights_of_quantized_run(bundle: Bundle) -> list[str]:
    """The float files (fp32, fp16) of a bundle whose trained network is an INT8 file (train.quantize):
    its float weights without the learned quantization, another network than the one trained, so
    validate leaves them out unless named."""
    if bundle.manifest.reference_format == "fp32":
        return []
    return [f for f in ("fp32", "fp16") if f in bundle.formats]


def select_formats(bundle: Bundle, requested: list[str] | None, runtime: str, onnxruntime_available: bool) -> list[str]:
    """Format names to validate, in FORMAT_ORDER.

    Default: every ONNX file for --runtime onnxruntime or openvino (for a train.quantize run's bundle,
    not the float weights' files: float_weights_of_quantized_run); every engine for --runtime
    tensorrt, plus the FP32 ONNX file (run in ONNX Runtime, when installed) so the
    engines' agreement with it can be measured. --runtime tensorrt refuses the
    CPU-only formats (int8_cpu) by name: it is not a TensorRT file.
    """
    have = list(bundle.formats)
    listing = f"this bundle has: {', '.join(have)}"
    engines = [f for f in have if is_engine(f)]
    if requested is None:
        if runtime == "tensorrt":
            if not engines:
                raise BundleError(f"{bundle.path} has no TensorRT engines ({listing}); "
                                  "run edgekd export --trt on this device, or use --runtime onnxruntime")
            chosen = engines + (["fp32"] if "fp32" in have and onnxruntime_available else [])
        else:
            float_weights = float_weights_of_quantized_run(bundle)
            chosen = [f for f in have if not is_engine(f) and f not in float_weights]
            if not chosen:
                raise BundleError(f"{bundle.path} has no ONNX files ({listing}); use --runtime tensorrt")
    else:
        chosen = []
        for name in requested:
            if name == "engine":
                if not engines:
                    raise BundleError(f"--formats engine: the bundle has no TensorRT engines; {listing}")
                chosen += engines
            elif name in CPU_ONLY_PRECISIONS and runtime == "tensorrt":
                raise BundleError(f"--runtime tensorrt: {name} is for ONNX Runtime on CPUs (asymmetric uint8 "
                                  "activations, which TensorRT rejects); validate it with --runtime onnxruntime, "
                                  "and TensorRT with engine_int8")
            elif name in have:
                chosen.append(name)
            else:
                what = "unknown format" if name not in FORMAT_ORDER else "format not in the bundle:"
                raise BundleError(f"{what} {name!r}; {listing} (engine = every TensorRT engine)")
    return [f for f in FORMAT_ORDER if f in chosen]


def onnx_providers_for(fmt: str, providers: list[str]) -> list[str]:
    """The ONNX Runtime providers a format's session gets: CPU-only formats never go to the
    TensorRT provider (it would have to parse uint8 zero points it rejects)."""
    if fmt not in CPU_ONLY_PRECISIONS or "TensorrtExecutionProvider" not in providers:
        return providers
    left = [p for p in providers if p != "TensorrtExecutionProvider"]
    if not left:
        raise BundleError(f"{fmt} is for ONNX Runtime on CPUs and cannot run on TensorrtExecutionProvider alone; "
                          "add cpu to --providers or leave it out")
    return left
