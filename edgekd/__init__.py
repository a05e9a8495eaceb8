"""edgekd: distill a large image classifier into a small, calibrated one and ship it to edge hardware.

    import edgekd
    run = edgekd.distill("recipes/quickstart.yaml", overrides={"train.epochs": 2})
    report = edgekd.validate(edgekd.export(run))

The API (distill, export, validate, Run, Bundle, Report) lives in edgekd.api and is
loaded on first use: importing the package never imports torch, because `edgekd
validate` must run on a device that has only numpy and ONNX Runtime.
"""

import sys
import types

__version__ = "0.1.0"

_API = ("distill", "export", "validate", "Run", "Bundle", "Report")
__all__ = [*_API, "__version__"]


def _api_name(name: str) -> property:
    def get(package: types.ModuleType):
        from edgekd import api

        return getattr(api, name)

    def keep_subpackage(package: types.ModuleType, value) -> None:
        # Python's import system sets edgekd.distill (edgekd.validate) to the subpackage when
        # it first imports it; it stays in sys.modules and `from edgekd.distill.x import y`
        # keeps working, but the package attribute remains the API function.
        package.__dict__[name] = value

    return property(get, keep_subpackage)


class _Package(types.ModuleType):
    """The edgekd module, with the API names as properties: edgekd.distill and edgekd.validate
    are also subpackages, and a plain attribute (or a module __getattr__) would turn into
    the subpackage as soon as it is imported."""

    def __dir__(self):
        return sorted({*super().__dir__(), *_API})


for _name in _API:
    setattr(_Package, _name, _api_name(_name))
sys.modules[__name__].__class__ = _Package
del _name
