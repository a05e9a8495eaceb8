"""INT8-aware training (`train.quantize: int8 | int8_cpu`): the student trains with fake quantization.

Built on torchao's PT2E quantization (`prepare_qat_pt2e` / `convert_pt2e`): the student is captured
with torch.export, its convolutions and linear layers (with their BatchNorm, folded as the export
folds it) are annotated by a quantizer, and fake-quantize modules learn the activation ranges
during training. Export converts the same prepared graph and writes it with the ONNX exporter,
so the INT8 file *is* the trained quantized network (QuantizeLinear / DequantizeLinear pairs with
the learned scales and zero points), not a fresh post-training calibration. Why this library and
not a hand-written fake quantizer or NNCF: docs/method.md, "INT8-aware training".

Flavours, as the bundle's INT8 files define them (deploy/int8.py):
- int8_cpu: uint8 activations, asymmetric (zero point learned), per-tensor; int8 weights,
  symmetric, per output channel. ONNX Runtime's CPU kernels.
- int8: int8 activations, symmetric (zero point 0), per-tensor; int8 weights symmetric per
  channel. TensorRT's explicit-quantization QDQ.

The teacher stays in float; every method trains the wrapped student as it trains a float one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import torch
from torch import nn

from edgekd.errors import MissingDependencyError, RecipeError, first_line

FLAVOURS = ("int8", "int8_cpu")
# An example batch of 1 would let torch.export specialize the batch axis to a constant.
EXAMPLE_BATCH = 2


def _torchao():
    """torchao's PT2E modules, or one line naming the extra."""
    from edgekd import optional

    # torchao 0.18 registers an Enum with torch's pytree at import, which torch 2.14 answers with a
    # deprecation line on every run (a library matter, nothing a user can act on): quieted here only.
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        optional.load("torchao", "train.quantize (INT8-aware training) needs")
    finally:
        pytree_log.setLevel(level)
    import torchao.quantization.pt2e as pt2e
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e import fake_quantize, quantize_pt2e

    return pt2e, x86, fake_quantize, quantize_pt2e


def quantizer(flavour: str):
    """The PT2E quantizer whose annotation matches the flavour's INT8 file.

    torchao's x86 quantizer annotates (which ops, with which shared ranges), with each convolution's
    output quantized as the runtimes need it (_runtime_quantizer); its specs are replaced
    by the flavour's, each with the plain FakeQuantize and a moving-average min/max observer. Not
    the fused fake quantizer of its default QAT config: that kernel derives scales and zero points
    its own way (for a non-negative int8 tensor it picks zero point -128, which TensorRT cannot
    take; per-channel weight scales 0.2-0.4% off), while convert_pt2e writes the observer's. With
    the plain one, training, evaluation and the exported file use the same numbers."""
    if flavour not in FLAVOURS:
        raise RecipeError(f"train.quantize {flavour!r} is not one of {', '.join(FLAVOURS)}")
    from dataclasses import replace

    _, x86, fq, _ = _torchao()
    from torchao.quantization.pt2e import observer

    config = x86.get_default_x86_inductor_quantization_config(is_qat=True)
    eps = 2 ** -12  # the default config's

    def spec(base, dtype, qmin, qmax, qscheme, per_channel=False):
        watch = observer.MovingAveragePerChannelMinMaxObserver if per_channel else observer.MovingAverageMinMaxObserver
        return replace(base, dtype=dtype, quant_min=qmin, quant_max=qmax, qscheme=qscheme,
                       observer_or_fake_quant_ctr=fq.FakeQuantize.with_args(observer=watch, eps=eps))

    if flavour == "int8":  # TensorRT: symmetric int8 activations, zero point 0
        act = spec(config.input_activation, torch.int8, -128, 127, torch.per_tensor_symmetric)
    else:  # ONNX Runtime on CPUs: uint8 activations, zero point learned
        act = spec(config.input_activation, torch.uint8, 0, 255, torch.per_tensor_affine)
    weight = spec(config.weight, torch.int8, -128, 127, torch.per_channel_symmetric, per_channel=True)
    config = replace(config, input_activation=act, output_activation=None if config.output_activation is None
                     else act, weight=weight)
    return _runtime_quantizer(x86)().set_global(config)


def _runtime_quantizer(x86):
    """torchao's x86 quantizer with the one change the bundle's runtimes need: every convolution
    and linear layer quantizes its own output (after its BatchNorm, before any activation).

    The x86 recipe fuses an activation or a residual add into the convolution (Conv -> HardSwish
    -> QuantizeLinear), the pattern Inductor compiles. ONNX Runtime and TensorRT fuse only
    DequantizeLinear -> Conv -> QuantizeLinear into an integer convolution: behind the x86
    pattern every Conv ran in float, with its weights dequantized at each call (MobileNetV3-small
    at 0.18x its FP32 file; docs/performance.md). Quantizing each output keeps every convolution
    integer, as the post-training files are, and the activations and adds between them run on
    the dequantized values, as there."""

    class RuntimeQuantizer(x86.X86InductorQuantizer):
        def _annotate_qat_conv2d_fusion_pattern(self, model, quantization_config, filter_fn=None):
            self._annotate_qat_conv2d_bn(model, quantization_config, filter_fn)  # output after the BN

        def _annotate_conv2d_binary_unary(self, *args, **kwargs):
            pass  # conv (+ add) + activation fused: not a runtime pattern

        _annotate_conv2d_binary = _annotate_conv2d_unary = _annotate_conv2d_binary_unary
        _annotate_linear_binary_unary = _annotate_linear_unary = _annotate_conv2d_binary_unary

        def _annotate_conv2d(self, model, quantization_config, filter_fn=None):
            # x86 leaves a lone convolution's output to be quantized by its consumer (if that is a
            # quantized op); ONNX Runtime's integer convolution needs its own QuantizeLinear.
            super()._annotate_conv2d(model, quantization_config, filter_fn)
            if quantization_config is None:
                return
            for node in model.graph.nodes:
                note = node.meta.get(x86.QUANT_ANNOTATION_KEY)
                if (node.target is torch.ops.aten.conv2d.default and note is not None
                        and note._is_output_of_quantized_pattern and note.output_qspec is None):
                    note.output_qspec = quantization_config.input_activation

    return RuntimeQuantizer


def _capture(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    example = torch.zeros(EXAMPLE_BATCH, in_channels, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},)).module()


class QuantizedStudent(nn.Module):
    """The prepared (fake-quantized) student. train()/eval() switch what a captured graph cannot
    switch by itself: BatchNorm and dropout behaviour, and whether the observers update the ranges
    (on in training; off in evaluation, so a val pass never moves them and evaluation is repeatable).

    Its state_dict holds the float student's own keys (the captured graph keeps them) plus the
    fake-quantize modules' state (scales, zero points, observers' running min/max) under
    `activation_post_process_*`, all under the prefix `graph.`."""

    def __init__(self, graph: nn.Module, flavour: str, arch: str):
        super().__init__()
        self.graph = graph
        self.flavour = flavour
        self.arch = arch  # models.registry.arch_name reads it for messages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> "QuantizedStudent":
        pt2e, _, fq, _ = _torchao()
        # Not nn.Module.train: a captured graph refuses it (its BatchNorm and dropout are ops, switched
        # by rewriting the graph, which move_exported_model_to_* do).
        self.training = mode
        (pt2e.move_exported_model_to_train if mode else pt2e.move_exported_model_to_eval)(self.graph)
        self.graph.apply(fq.enable_observer if mode else fq.disable_observer)
        return self

    def float_state(self) -> dict[str, torch.Tensor]:
        """The float student's weights, under the keys of the model edgekd builds by name."""
        return self._graph_state(quantizers=False)

    def quant_state(self) -> dict[str, torch.Tensor]:
        """The fake-quantize modules' state: what export needs besides the float weights."""
        return self._graph_state(quantizers=True)

    def _graph_state(self, quantizers: bool) -> dict[str, torch.Tensor]:
        """The captured graph's state without the `graph.` prefix: the fake quantizers' entries
        (`activation_post_process_*`), or everything else."""
        state = self.graph.state_dict()
        return {k: v for k, v in state.items()
                if k.split(".", 1)[0].startswith("activation_post_process") == quantizers}

    @torch.no_grad()
    def converted(self) -> nn.Module:
        """The quantized network as PT2E converts it: QDQ ops with the learned scales, weights
        quantized; what the ONNX exporter writes as the INT8 file."""
        import copy

        pt2e, _, _, q = _torchao()
        self.eval()
        converted = q.convert_pt2e(copy.deepcopy(self.graph))
        # The ONNX exporter calls .eval(), which a captured graph refuses unless told how to do it.
        pt2e.allow_exported_model_train_eval(converted)
        return converted


def prepare(model: nn.Module, flavour: str, in_channels: int, image_size: int, arch: str) -> QuantizedStudent:
    """Capture `model` (with its current weights: fresh, or a float checkpoint's) and insert the
    flavour's fake quantization. A model torch.export cannot capture is one RecipeError."""
    _, _, _, q = _torchao()
    was_training = model.training
    try:
        graph = _capture(model.cpu(), in_channels, image_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = q.prepare_qat_pt2e(graph, quantizer(flavour))
    except (RecipeError, MissingDependencyError):
        raise
    except Exception as e:  # noqa: BLE001 - torch.export raises many unrelated types
        raise RecipeError(f"train.quantize {flavour}: the student {arch} cannot be captured for INT8-aware "
                          f"training ({first_line(e)[:200]}); train it in float and use edgekd export's "
                          f"post-training INT8") from e
    unquantized = _float_weight_ops(prepared)
    if unquantized:
        raise RecipeError(f"train.quantize {flavour}: the student {arch} has layers whose weights INT8-aware training "
                          f"cannot quantize: {', '.join(unquantized[:3])}{' ...' if len(unquantized) > 3 else ''} "
                          f"(it quantizes 2-D convolutions and linear layers, as the flavour's INT8 file needs "
                          f"them); train it in float and use edgekd export's post-training INT8")
    student = QuantizedStudent(prepared, flavour, arch)
    return student.train(was_training)


# Ops that multiply by a weight tensor; their weights must reach them through a fake quantizer.
_WEIGHTED_OPS = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                 "convolution", "linear", "addmm", "mm", "bmm", "matmul"}


def _float_weight_ops(prepared: nn.Module) -> list[str]:
    """'op (module path)' for each weighted op of the prepared graph that takes a parameter as it is,
    not through a fake quantizer: a layer the quantizer does not annotate (a transposed or 1-D
    convolution), which would train in float while the INT8 file's flavour quantizes it."""
    found = []
    for node in prepared.graph.nodes:
        name = getattr(node.target, "_opname", None) if node.op == "call_function" else None
        if name not in _WEIGHTED_OPS:
            continue
        if any(a.op == "get_attr" and getattr(a.meta.get("val"), "ndim", 2) >= 2 for a in node.all_input_nodes):
            stack = node.meta.get("nn_module_stack") or {}
            where = next(reversed(stack.values()))[0] if stack else node.name
            found.append(f"{name} ({where})")
    return found


def restore(model: nn.Module, ckpt_quant: dict[str, Any], in_channels: int, image_size: int,
            arch: str) -> QuantizedStudent:
    """The trained quantized student from a student.pt: `model` holds its float weights already,
    `ckpt_quant` is student.pt's `quantize` entry (flavour and fake-quantize state)."""
    student = prepare(model, ckpt_quant["flavour"], in_channels, image_size, arch)
    state = {**{f"graph.{k}": v for k, v in student.float_state().items()},
             **{f"graph.{k}": v for k, v in ckpt_quant["state"].items()}}
    student.load_state_dict(state)
    return student.eval()
