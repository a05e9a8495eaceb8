"""What every runner shares: the activate/deactivate lifecycle and the I/O it reports.

Modelled on Polygraphy's runners: constructing a runner only records what to load;
`activate()` loads the model (and takes any device resources), `deactivate()` gives
everything back, and `with Runner(...) as r:` does both. Cleanup is never left to a
finalizer: when the garbage collector runs one is unknown, and at interpreter exit the
CUDA driver may already be gone.
"""

from __future__ import annotations

import numpy as np

from edgekd.errors import BundleError

TRT_MISSING = "TensorRT and an NVIDIA GPU are not available on this machine"


class Runner:
    """A model file that turns a float32 NCHW batch into logits, while active.

    Once active it exposes what the loaded model says about its I/O (checked against
    a bundle's manifest by validate.bundle.check_model_io) and `run(batch) -> logits`.
    `run` is the only thing timed for throughput, so it does no work beyond the
    runtime's own call, and does not check that the runner is active.
    """

    name: str  # "onnxruntime", "openvino" or "tensorrt"
    providers: list[str]  # what actually runs the model (ONNX Runtime's providers, or the GPU)
    input_name: str
    input_shape: list
    output_name: str
    output_shape: list
    max_batch: int | None = None  # largest batch the model accepts (a TensorRT profile); None: any

    _active = False

    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> None:
        """Load the model; on failure, whatever was taken on the way is given back before the error."""
        if self._active:
            raise RuntimeError(f"{type(self).__name__} is already active")
        try:
            self._activate()
        except BaseException:
            self._deactivate()
            raise
        self._active = True

    def deactivate(self) -> None:
        """Give back the model and every device resource; a no-op when not active."""
        if self._active:
            self._active = False
            self._deactivate()

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        """Must cope with a half-done `_activate` (it is also called when that fails)."""
        raise NotImplementedError


def require_one_float_input_and_output(file: str, input_types: list[str], output_types: list[str],
                                       float32: str) -> None:
    """A bundle's model takes one float32 tensor and gives one; `float32` is the runtime's name for the type."""
    if len(input_types) != 1 or len(output_types) != 1:
        raise BundleError(f"{file} has {len(input_types)} inputs and {len(output_types)} outputs; expected 1 and 1")
    if input_types[0] != float32 or output_types[0] != float32:
        raise BundleError(f"{file} takes {input_types[0]} and gives {output_types[0]}; "
                          "bundles use float32 input and output")
