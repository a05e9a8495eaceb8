"""Starting a net from a weights file: `student.init` / `teacher.init` in a recipe.

* ``full`` (the default): every tensor of the net comes from the file, strictly
  (registry.load_weights); any missing, extra or misshapen tensor is an error.
* ``backbone``: every tensor whose name and shape fit is loaded; the rest keep
  their fresh initialisation (build_model's, deterministic for the run's seed).
  Made for pretrained files, e.g. torchvision's ImageNet ``mobilenet_v2`` weights
  into a 10-class student: the 1000-class classifier does not fit and is
  re-initialised, everything else loads.

The classifier is the net's last layer that holds parameters; ``backbone`` needs
it to be an ``nn.Linear`` with one output per class (true of every model in the
registry) and refuses a net whose last layer is anything else, since it could not
tell the classifier apart from a backbone layer that failed to load.

A wrong file must be an error, not a silently random net: ``backbone`` refuses a
file that fills less than MIN_BACKBONE_SHARE (50%) of the parameters outside the
classifier (counted in parameters, BatchNorm statistics excluded). A file for
another architecture matches almost no names; one of another width matches the
names but few shapes; both stay far below it.

BatchNorm's ``num_batches_tracked`` counters are no weights: a file saved before PyTorch
0.4.1 (torchvision's older ImageNet files) has none, and a missing one counts as loaded
with the net's own value, in both modes, as torch's own loading treats it
(registry.fit_state).

Names: edgekd's torchvision models are torchvision's own classes built in place,
so their tensor names are torchvision's and its state-dict files load as they
are. Files saved from a DistributedDataParallel or torch.compile wrapper carry
``module.`` / ``_orig_mod.`` in front of every name; that prefix is dropped. A
training framework's file names the net by its attribute (Lightning: ``model.``
when the LightningModule keeps it in ``self.model``), often beside other modules
(a loss, a teacher): the prefix under which the most of the net's own names are
found is taken, and only the tensors under it (``checkpoint_prefix`` names it;
two prefixes that fit equally well are ambiguous and must be named).

Stems: at ``data.image_size <= 64`` the torchvision models get a small-input stem
(torchvision_models.py). Where that changes a conv's shape (resnet's 7x7 conv1
becomes 3x3, ``in_channels != 3``) the file's tensor does not fit and the stem
conv stays freshly initialised, listed under "not loaded"; where it only changes
a stride (mobilenet, efficientnet, shufflenet) the pretrained weights load into
the stride-1 conv. Above 64 pixels the stem is torchvision's and loads whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from edgekd.errors import CheckpointError, ModelError
from edgekd.models.registry import NOT_IN_FILE, arch_name, check_state_dict, fit_state, load_weights

INIT_MODES = ("full", "backbone")
MIN_BACKBONE_SHARE = 0.5
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_NAMES_SHOWN = 3


@dataclass(frozen=True)
class InitReport:
    """What ``init_weights`` took from a file and what it left freshly initialised."""

    mode: str
    source: str
    loaded: tuple[str, ...]               # the net's tensors taken from the file
    fresh: tuple[tuple[str, str], ...]    # (the net's tensor, why it was not loaded)
    unused: tuple[str, ...]               # the file's tensors the net has no place for
    backbone_params_loaded: int
    backbone_params: int
    classifier: str                       # module name of the net's classifier
    classifier_reinitialised: bool

    @property
    def backbone_share(self) -> float:
        return self.backbone_params_loaded / self.backbone_params if self.backbone_params else 1.0

    def share_text(self) -> str:
        # Rounded down, so a stem conv left out of 11M parameters reads 99.9%, never 100.0%.
        return f"{math.floor(1000 * self.backbone_share) / 10:.1f}%"

    def lines(self, role: str) -> list[str]:
        """One line of what was loaded, one of what was not."""
        total = len(self.loaded) + len(self.fresh)
        loaded = (f"{role}.init {self.mode} from {self.source}: loaded {len(self.loaded)} of {total} tensors, "
                  f"{self.share_text()} of the {self.backbone_params:,} parameters outside the classifier")
        if not self.fresh and not self.unused:
            return [loaded, f"{role}.init {self.mode}: nothing left freshly initialised, no unused tensor in the file"]
        head = " (the classifier: class count differs)" if self.classifier_reinitialised else ""
        shown = ", ".join(f"{name} ({why})" for name, why in self.fresh[:_NAMES_SHOWN])
        more = f", +{len(self.fresh) - _NAMES_SHOWN} more" if len(self.fresh) > _NAMES_SHOWN else ""
        fresh = f"{len(self.fresh)} freshly initialised{head}" + (f": {shown}{more}" if self.fresh else "")
        unused = f"; {len(self.unused)} file tensors unused" + (f" (e.g. {self.unused[0]})" if self.unused else "")
        return [loaded, f"{role}.init {self.mode}: not loaded: {fresh}{unused}"]

    def to_dict(self) -> dict[str, Any]:
        """For summary.json: what the run started from."""
        return {
            "mode": self.mode, "source": self.source, "tensors_loaded": len(self.loaded),
            "tensors_fresh": [name for name, _ in self.fresh], "file_tensors_unused": len(self.unused),
            "backbone_share": round(self.backbone_share, 6), "classifier": self.classifier,
            "classifier_reinitialised": self.classifier_reinitialised,
        }  # fmt: skip


def _under(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _names_sample(state: Mapping[str, Any], n: int = 3) -> str:
    return ", ".join(f"'{k}'" for k in list(state)[:n]) + (", ..." if len(state) > n else "")


def select_prefix(model: nn.Module, state: Mapping[str, Any], source: str, prefix: str | None = None,
                  role: str = "teacher") -> dict[str, Any]:
    """The file's tensors that belong to the net, named as the net names them.

    `prefix` given (the recipe's checkpoint_prefix): the tensors under it, stripped. Otherwise
    wrapper prefixes every name carries are dropped (strip_wrapper_prefix), and if the net's names
    are found more often under some leading prefix ('model.', 'student.'...) than without, the
    tensors under that prefix are taken; two prefixes that fit equally well are refused (name one)."""
    if prefix is not None:
        picked = _under(state, prefix)
        if not picked:
            raise CheckpointError(f"no tensor of checkpoint {source} is under {role}.checkpoint_prefix {prefix!r}; "
                                  f"its names look like {_names_sample(state)}")
        return picked
    state = strip_wrapper_prefix(state)
    own = set(model.state_dict())
    counts: dict[str, int] = {}
    for name in state:
        parts = name.split(".")
        for i in range(1, len(parts)):
            head = ".".join(parts[:i]) + "."
            if name[len(head):] in own:
                counts[head] = counts.get(head, 0) + 1
    plain = sum(1 for name in state if name in own)
    best = max(counts.values(), default=0)
    if best <= plain:
        return state
    tied = sorted(p for p, c in counts.items() if c == best)
    if len(tied) > 1:
        raise CheckpointError(f"checkpoint {source} holds {best} of {arch_name(model)}'s tensors under each of "
                              f"{', '.join(repr(p) for p in tied[:3])}; set {role}.checkpoint_prefix to the one to load")
    return _under(state, tied[0])


def strip_wrapper_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` / ``_orig_mod.`` prefix that every name carries (DDP, torch.compile)."""
    state = dict(state)
    while state:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def find_classifier(model: nn.Module, num_classes: int) -> str:
    """Module name of the classifier: the last layer holding parameters, an nn.Linear with num_classes outputs."""
    arch = arch_name(model)
    layers = [(name, m) for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]
    if not layers:
        raise ModelError(f"init: backbone cannot find the classifier of {arch}: it has no parameters")
    name, last = layers[-1]
    if not isinstance(last, nn.Linear) or last.out_features != num_classes:
        what = f"nn.Linear with {last.out_features} outputs" if isinstance(last, nn.Linear) else type(last).__name__
        raise ModelError(f"init: backbone cannot find the classifier of {arch}: its last layer '{name}' is a {what}, "
                         f"not an nn.Linear with {num_classes} outputs (one per class); use init: full")
    return name


def init_weights(model: nn.Module, state: Mapping[str, Any], mode: str, source: str, num_classes: int,
                 prefix: str | None = None, role: str = "teacher") -> InitReport | None:
    """Load ``state`` (read by distill.checkpoint.load_net_weights) into ``model`` as ``mode`` says,
    the tensors under ``prefix`` (select_prefix; None: found from the names).

    Returns the report for ``backbone`` (None for ``full``, which loads everything or
    raises). Raises CheckpointError, one line, for a file that does not fit.
    """
    if mode not in INIT_MODES:
        raise ModelError(f"init {mode!r} is not one of {', '.join(INIT_MODES)}")
    check_state_dict(state, source)
    state = select_prefix(model, state, source, prefix, role)
    if mode == "full":
        try:
            load_weights(model, state, source)
        except CheckpointError as e:
            raise CheckpointError(f"{e} (init: backbone loads only the tensors that fit)") from None
        return None
    classifier = find_classifier(model, num_classes)
    fit = fit_state(model, state)
    take, fresh, unused = fit.fits, fit.fresh, tuple(fit.unused)
    in_classifier = lambda name: name.startswith(classifier + ".")  # noqa: E731
    params = {name: p.numel() for name, p in model.named_parameters() if not in_classifier(name)}
    report = InitReport(
        mode=mode, source=str(source), loaded=tuple(take), fresh=tuple(fresh), unused=unused,
        backbone_params_loaded=sum(n for name, n in params.items() if name in take),
        backbone_params=sum(params.values()), classifier=classifier,
        classifier_reinitialised=any(in_classifier(name) for name, _ in fresh),
    )  # fmt: skip
    if report.backbone_share < MIN_BACKBONE_SHARE:
        name, why = next((f for f in fresh if not in_classifier(f[0])), fresh[0])
        hint = f"; the file has e.g. '{next(iter(state))}'" if why == NOT_IN_FILE and state else ""
        raise CheckpointError(
            f"checkpoint {source} does not fit {arch_name(model)} (init: backbone): it fills {report.share_text()} "
            f"of the parameters outside the classifier, at least {100 * MIN_BACKBONE_SHARE:.0f}% needed; "
            f"e.g. '{name}' {why}{hint}"
        )
    model.load_state_dict(take, strict=False)  # every name and shape checked above
    return report
