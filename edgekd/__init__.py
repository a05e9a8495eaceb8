"""edgekd: distill a large image classifier into a small, calibrated one and ship it to edge hardware.

Importing the package never imports torch: `edgekd validate` must run on a device
that has only numpy and ONNX Runtime.
"""

__version__ = "0.1.0"
