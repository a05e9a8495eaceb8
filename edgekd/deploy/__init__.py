"""Export a trained student for edge devices: ONNX FP32/FP16/INT8/INT8-for-CPUs (+ TensorRT engines) in one bundle.

    onnx_export  PyTorch -> one self-contained FP32 ONNX file (dynamo exporter)
    fp16         FP32 ONNX -> FP16 compute, FP32 input/output
    int8         FP32 ONNX -> INT8 QDQ, calibrated on training images: symmetric (TensorRT + ONNX
                 Runtime) and uint8-activation (ONNX Runtime on CPUs only) flavours
    int8_search  per INT8 file, the fastest one that passes the recipe's gate (--int8-search)
    tensorrt     ONNX -> serialized TensorRT engines (--trt)
    parity       each file vs PyTorch on the val split
    source       the run, its student and its data split
    bundle       export_bundle: all of the above into one atomic folder + manifest.json
    bundle_writer  each model file of the bundle, written and checked against PyTorch

Imports torch and onnx: not for devices (they only need edgekd.validation).
"""

from edgekd.deploy.bundle import export_bundle

__all__ = ["export_bundle"]
