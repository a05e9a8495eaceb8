"""edgekd: distill a large image classifier into a small, calibrated one and ship it to edge hardware.

    import edgekd
    run = edgekd.distill("recipes/quickstart.yaml", overrides={"train.epochs": 2})
    report = edgekd.validate(edgekd.export(run))

The API (distill, export, validate, Run, Bundle, Report) lives in edgekd.api and is
loaded on first use: importing the package never imports torch, because `edgekd
validate` must run on a device that has only numpy and ONNX Runtime.
"""

__version__ = "0.1.0"

_API = ("distill", "export", "validate", "Run", "Bundle", "Report")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    # Loaded on first use: edgekd.api imports what a device may lack only inside the functions,
    # and no subpackage shares an API name (training, deploy, validation), so nothing shadows them.
    if name in _API:
        from edgekd import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgekd' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_API})
