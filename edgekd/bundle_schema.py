"""The bundle contract: what `edgekd export` writes and `edgekd validate` reads (export/README.md).

Both sides import these names from here, so the writer (edgekd.deploy, which needs
torch) and the reader (edgekd.validate, which must run without it) cannot disagree.
Torch-free and import-free on purpose.

A change here changes what is on disk: keys and values that old bundles carry must
keep validating, or SCHEMA_VERSION goes up (and validate refuses the other version
in one line).
"""

SCHEMA_VERSION = 1
BUNDLE_KIND = "edgekd.bundle"  # manifest.json's "kind"
MANIFEST_FILE = "manifest.json"
# Present (with the reason) only in a bundle written without a file it was asked for (an INT8 search
# that found none): `edgekd validate` with no bundle named skips it; named, it validates what is there.
INCOMPLETE_KEY = "incomplete"
# The precisions a model file may have (files.<name>.precision); the ONNX file of each
# is model_<precision>.onnx.
PRECISIONS = ("fp32", "fp16", "int8", "int8_cpu")
# int8_cpu (model_int8_cpu.onnx) has asymmetric uint8 activations: for ONNX Runtime on CPUs.
# TensorRT rejects non-zero zero points, so there is no int8_cpu engine and neither the
# TensorRT runtime nor ONNX Runtime's TensorRT provider ever gets that file.
CPU_ONLY_PRECISIONS = ("int8_cpu",)
