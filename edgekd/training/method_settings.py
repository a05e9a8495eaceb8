"""Each distillation method's settings: the `distill:` keys it takes and what it needs of a run. Torch-free.

A recipe's `distill:` section is one of these classes, chosen by its `method` key
(`DistillSettings`, a union keyed by `method`), so a key the chosen method never reads
(`weighting` under `method: dml`) is refused instead of ignored. The training code of
each method (edgekd/training/methods/, torch) registers under its settings class; the
recipe needs only this module. The equations behind every key: docs/method.md.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

# What a recipe without `distill.method` trains.
DEFAULT_METHOD = "bdkd"

# Softening temperature T of the soft (KL) terms.
Temperature = Annotated[float, Field(gt=0, le=100)]
# A loss term's weight.
Weight = Annotated[float, Field(ge=0)]


class MethodSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Whether the teacher gets an optimizer and is trained in the loop (online KD). A method
    # that keeps it frozen distils from a trained one, so the recipe must name teacher.checkpoint.
    trains_teacher: ClassVar[bool] = True

    @classmethod
    def method_name(cls) -> str:
        return cls.model_fields["method"].default

    @classmethod
    def setting_names(cls) -> list[str]:
        """The keys this method takes besides `method`, in the order a recipe dump writes them."""
        return [k for k in cls.model_fields if k != "method"]


class CESettings(MethodSettings):
    """ce: teacher and student each trained alone with cross-entropy (the baseline)."""

    method: Literal["ce"] = "ce"
    ce_weight: Weight = 1.0


class KDSettings(MethodSettings):
    """kd: Hinton distillation from a frozen, trained teacher."""

    trains_teacher: ClassVar[bool] = False
    method: Literal["kd"] = "kd"
    temperature: Temperature = 4.0
    ce_weight: Weight = 1.0
    # Forward KL(p_t || p_s): the student towards the teacher.
    kl_weight: Weight = 1.0


class DMLSettings(MethodSettings):
    """dml: Deep Mutual Learning, each net pulled towards the other's prediction."""

    method: Literal["dml"] = "dml"
    temperature: Temperature = 4.0
    ce_weight: Weight = 1.0
    # Student's forward KL(p_t || p_s).
    kl_weight: Weight = 1.0
    # Teacher's forward KL(p_s || p_t).
    teacher_kl_weight: Weight = 1.0


class BDKDSettings(MethodSettings):
    """bdkd: Balanced-Divergence KD, forward or reverse KL per sample by the entropy gap."""

    method: Literal["bdkd"] = "bdkd"
    temperature: Temperature = 4.0
    ce_weight: Weight = 1.0
    # Student's divergence weights: forward KL(p_t||p_s) gets kl_weight (a),
    # reverse KL(p_s||p_t) gets reverse_weight (b).
    kl_weight: Weight = 1.0
    reverse_weight: Weight = 1.0
    # Per-sample weighting between forward and reverse KL.
    weighting: Literal["hard", "soft", "forward", "reverse"] = "hard"
    soft_tau: float = Field(0.1, gt=0, description="width of the soft switch, in nats of entropy gap")
    # standard: a student more certain than the teacher gets forward KL (spread),
    # a less certain one reverse KL (sharpen). flipped swaps them (ablation).
    switch: Literal["standard", "flipped"] = "standard"
    # Temperature at which the switch's two entropies are measured (default: temperature).
    # At T=4 a 10-class prediction is nearly uniform and the entropy gap is a few
    # thousandths of a nat; at 1 it reflects the confidence that calibration is about.
    gap_temperature: Optional[Temperature] = None
    # The teacher's regulariser towards the student: reverse KL(p_t||p_s) from the
    # teacher's side by default, weighted by teacher_kl_weight (c).
    teacher_kl_weight: Weight = 1.0
    teacher_divergence: Literal["reverse", "forward", "none"] = "reverse"


# Every method, by name: the one list of them (the training code registers under these).
METHOD_SETTINGS: dict[str, type[MethodSettings]] = {
    cls.method_name(): cls for cls in (CESettings, KDSettings, DMLSettings, BDKDSettings)}

# The `distill:` section of a recipe: the settings of the method its `method` key names.
DistillSettings = Annotated[Union[CESettings, KDSettings, DMLSettings, BDKDSettings], Field(discriminator="method")]


def method_names() -> list[str]:
    return sorted(METHOD_SETTINGS)


def with_method(section: Any) -> Any:
    """A `distill:` mapping without `method` is the default method's."""
    if isinstance(section, dict) and "method" not in section:
        return {"method": DEFAULT_METHOD, **section}
    return section


def unknown_method(name: Any) -> str:
    return f"{name!r} is not a method; available: {', '.join(method_names())}"


def not_keys_of(method: str, keys: list[str]) -> str:
    """One line for `distill.<key>`s under distill.method `method`, which does not take them: which
    methods do (or that none does: a typo), and the keys `method` takes."""
    allowed = f"allowed for distill.method {method}: {', '.join(METHOD_SETTINGS[method].setting_names())}"
    owners = [m for m in method_names() if any(k in METHOD_SETTINGS[m].model_fields for k in keys)]
    typos = [k for k in keys if not any(k in s.model_fields for s in METHOD_SETTINGS.values())]
    if len(keys) == 1 and typos:
        return f"unknown key 'distill.{keys[0]}' (a typo?); {allowed}"
    whose = [f"{'a key' if len(keys) == 1 else 'keys'} of {', '.join(owners)}"] if owners else []
    whose += [f"{', '.join(typos)}: no method's, a typo?"] if typos else []
    names = ", ".join(f"distill.{k}" for k in keys)
    return f"{names} {'is not a key' if len(keys) == 1 else 'are not keys'} of {method} ({'; '.join(whose)}); {allowed}"


def own_keys_only(section: dict[str, Any]) -> dict[str, Any]:
    """A saved `distill:` section with only the keys its method takes. Runs saved before each
    method had its own settings wrote one flat section holding every method's keys, at their
    value or default; their method never read the others, so leaving those out reads the run
    as it trained (a ce run of quickstart recorded teacher_divergence: none, say)."""
    settings = METHOD_SETTINGS.get(with_method(section).get("method"))
    if settings is None:
        return section
    return {k: v for k, v in section.items() if k in settings.model_fields}
