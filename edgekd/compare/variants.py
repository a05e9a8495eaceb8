"""What a comparison runs: variants, seeds and every run's recipe, checked before any training. Torch-free.

A variant is a method name with optional recipe overrides joined by ':', e.g.
`bdkd:weighting=soft:temperature=2` or `ce:optim.label_smoothing=0.1`. A key
without a dot is a `distill.` key; a dotted key of any section (data., teacher.,
student., distill., optim., teacher_optim., train., validate.) is used as is.
A `distill.` key must be one the variant's method takes (`dml:weighting=soft` is
refused); the recipe's own distill keys that the method does not take are left out
(recipe.apply_overrides: a variant switches the recipe's method).
A label ending in `+ts` (`ce+ts`) is a post-hoc row: the runs of the variant
before `+ts`, their student logits divided by a temperature fitted on each run's
tune split. It trains nothing of its own.

With `--deployed FLAVOURS` every row also gets one row per deployed file,
`<label>@<flavour>` (`bdkd@int8_search`, `ce+ts@int8_cpu`): the run's student
exported as that file (DEPLOYED; a +ts row's temperature fitted on tune and folded
into the file) and scored from the file's own logits in ONNX Runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgekd.training.method_settings import METHOD_SETTINGS, not_keys_of, unknown_method
from edgekd.errors import DataError, RecipeError
from edgekd.recipe import Recipe, load_recipe

POSTHOC_SUFFIX = "+ts"
EVAL_SPLITS = ("val", "tune", "test")
DEPLOYED_SEPARATOR = "@"
# --deployed: the file a row is scored from. int8_search is model_int8_cpu.onnx as `edgekd export
# --int8-search` chooses it (judged on the tune split by the recipe's gate); the others are what plain
# export writes (int8 and int8_cpu from one minmax calibration).
DEPLOYED = {"fp32": "model_fp32.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx",
            "int8_cpu": "model_int8_cpu.onnx", "int8_search": "model_int8_cpu.onnx"}


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    overrides: tuple[str, ...]
    # Post-hoc temperature scaling of the runs of `base` (a label); None for a trained variant.
    base: str | None = None
    # The deployed file this row is scored from (a DEPLOYED key); None: the PyTorch student.
    deployed: str | None = None

    @property
    def slug(self) -> str:
        """File-name form of the label; a +ts row has none of its own (it reads its base's files), but a
        deployed +ts row has (its file holds the temperature)."""
        if self.deployed is not None:
            own = _file_name(self.run_label) + (POSTHOC_SUFFIX if self.base is not None else "")
            return own + DEPLOYED_SEPARATOR + self.deployed
        return _file_name(self.base if self.base is not None else self.label)

    @property
    def trained(self) -> bool:
        return self.base is None and self.deployed is None

    @property
    def run_label(self) -> str:
        """The label of the trained variant whose runs this row is made from."""
        if self.base is not None:
            return self.base
        return self.label.split(DEPLOYED_SEPARATOR)[0]


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label.replace(":", "-"))


def split_top_level(text: str, sep: str) -> list[str]:
    """Split at `sep` outside brackets, so a list value (`optim.milestones=[0.5,0.75]`) stays whole."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _parse_one(item: str) -> Variant:
    method, *pairs = split_top_level(item, ":")
    if method not in METHOD_SETTINGS:
        raise RecipeError(f"--methods {item!r}: {unknown_method(method)}")
    overrides = [f"distill.method={method}"]
    for pair in pairs:
        if "=" not in pair:
            raise RecipeError(f"--methods {item!r}: '{pair}' should be KEY=VALUE, e.g. bdkd:weighting=soft")
        key, value = pair.split("=", 1)
        key = key.strip()
        if key in ("train.seed", "seed"):
            raise RecipeError(f"--methods {item!r}: the seed comes from --seeds, not from a variant")
        if key in ("method", "distill.method"):
            raise RecipeError(f"--methods {item!r}: the method is the variant's name ({method}), not a key; "
                              f"write {value}{item[len(method):].replace(':' + pair, '')} instead")
        key = key if "." in key else f"distill.{key}"
        section, _, name = key.partition(".")
        if section == "distill" and name not in METHOD_SETTINGS[method].model_fields:
            raise RecipeError(f"--methods {item!r}: {not_keys_of(method, [name])}")
        overrides.append(f"{key}={value}")
    return Variant(item, method, tuple(overrides))


def parse_variants(spec: list[str], deployed: list[str] | None = None) -> list[Variant]:
    """Labels in the order given, each followed by its deployed rows (one per flavour of `deployed`).
    A `+ts` row also trains its base variant's runs (listed or not)."""
    out: list[Variant] = []
    for item in spec:
        if DEPLOYED_SEPARATOR in item:
            raise RecipeError(f"--methods {item!r}: '{DEPLOYED_SEPARATOR}' names a deployed file; list the "
                              f"flavours with --deployed instead")
        if item.endswith(POSTHOC_SUFFIX):
            base = _parse_one(item[: -len(POSTHOC_SUFFIX)])
            out.append(Variant(item, base.method, base.overrides, base=base.label))
        else:
            out.append(_parse_one(item))
    if len({v.label for v in out}) != len(out):
        raise RecipeError("--methods lists the same variant twice")
    flavours = parse_deployed(deployed)
    if flavours:
        out = [row for v in out for row in (v, *(Variant(f"{v.label}{DEPLOYED_SEPARATOR}{f}", v.method, v.overrides,
                                                         v.base, f) for f in flavours))]
    trained = {v.slug: v for v in out if v.trained}
    for v in out:
        other = trained.get(v.slug)
        if v.trained and other is not v:
            raise RecipeError(f"--methods: {other.label!r} and {v.label!r} would share the run folder name "
                              f"{v.slug!r}; write one of them differently")
    return out


def parse_deployed(flavours: list[str] | None) -> list[str]:
    """--deployed: DEPLOYED keys, each once, in DEPLOYED's order."""
    flavours = list(flavours or [])
    unknown = [f for f in flavours if f not in DEPLOYED]
    if unknown:
        raise RecipeError(f"--deployed {unknown[0]!r} is not a deployed file edgekd scores; allowed: "
                          f"{', '.join(DEPLOYED)}")
    if len(set(flavours)) != len(flavours):
        raise RecipeError("--deployed lists the same file twice")
    return [f for f in DEPLOYED if f in flavours]


def trained_variants(variants: list[Variant]) -> list[Variant]:
    """The variants that have runs: every trained label, plus the base of each +ts or deployed row, once each."""
    out: dict[str, Variant] = {}
    for v in variants:
        base = v if v.trained else Variant(v.run_label, v.method, v.overrides)
        out.setdefault(base.slug, base)
    return list(out.values())


def parse_seeds(seeds: list[str]) -> list[int]:
    try:
        out = [int(s) for s in seeds]
    except ValueError:
        raise RecipeError(f"--seeds takes integers >= 0, got {','.join(seeds)!r}") from None
    if any(s < 0 for s in out):
        raise RecipeError(f"--seeds takes integers >= 0, got {','.join(seeds)!r}")
    if len(set(out)) != len(out):
        raise RecipeError("--seeds lists the same seed twice")
    return out


def plan(recipe_path: Path, variants: list[Variant], seeds: list[int], overrides: list[str]) -> list[tuple[Variant, int, Recipe]]:
    """Resolve every run's recipe up front, so a typo fails before hours of training."""
    runs = []
    for v in trained_variants(variants):
        for seed in seeds:
            try:
                r = load_recipe(recipe_path, [*overrides, *v.overrides, f"train.seed={seed}"])
            except RecipeError as e:  # --set applies to every variant: say which one it does not fit
                raise RecipeError(f"variant {v.label!r}: {e}") from None
            runs.append((v, seed, r))
    return runs


def split_count(r: Recipe, which: str) -> int | None:
    """Images asked for in split `which` of r: a count, None for a fraction > 0 (size known with the data), 0 for none."""
    if which == "val":
        return None
    size, fraction = getattr(r.data, f"{which}_size"), getattr(r.data, f"{which}_fraction")
    if size is not None:
        return int(size)
    return None if fraction > 0 else 0


def check_eval_split(runs: list[tuple[Variant, int, Recipe]], variants: list[Variant], eval_split: str) -> None:
    """The evaluation split must exist in every run's recipe; +ts rows need a tune split that is not it."""
    if eval_split not in EVAL_SPLITS:
        raise RecipeError(f"--eval-split {eval_split!r} is not allowed; allowed: {', '.join(EVAL_SPLITS)}")
    for v, _seed, r in runs:
        if split_count(r, eval_split) == 0:
            own_data = any(o.startswith("data.") for o in v.overrides)
            who = f"variant {v.label!r}" if own_data else "the recipe"
            raise RecipeError(f"--eval-split {eval_split}: {who} has no {eval_split} split; set "
                              f"data.{eval_split}_fraction or data.{eval_split}_size (e.g. --set data.{eval_split}_fraction=0.2)")
    for v in variants:
        # A +ts row fits its temperature on the tune split; an int8_search row's candidates are judged there.
        if v.base is None and v.deployed != "int8_search":
            continue
        what = "fits its temperature on" if v.base is not None else "judges its INT8 candidates on"
        if eval_split == "tune":
            raise RecipeError(f"{v.label!r} {what} the tune split, so it cannot also be evaluated there; use "
                              f"--eval-split val or test")
        for base, _seed, r in runs:
            if base.label == v.run_label and split_count(r, "tune") == 0:
                raise RecipeError(f"{v.label!r} {what} each run's tune split, and the recipe has none; set "
                                  f"data.tune_fraction or data.tune_size (e.g. --set data.tune_fraction=0.1)")


def check_splits_fit(recipes: list[Recipe]) -> None:
    """Build every distinct split once from the data (torch-free), so a split that does not fit the
    data fails before any run folder is created, not at the first run that uses it."""
    from edgekd.data.sources import load_source
    from edgekd.data.split import make_split

    sources: dict[tuple, int] = {}
    seen: set[str] = set()
    for r in recipes:
        d = r.data
        key = (d.name, d.root, d.image_size, d.cache_dir)
        args = d.split_args()
        ident = repr((key, sorted(args.items()), d.subset, d.split_seed))
        if ident in seen:
            continue
        seen.add(ident)
        if key not in sources:
            root = None if d.name == "digits" or d.root is None else str(Path(d.root).absolute())
            sources[key] = len(load_source(d.name, root, d.image_size, d.download, d.cache_dir))
        try:
            make_split(sources[key], **args, subset=d.subset, seed=d.split_seed)
        except DataError as e:
            raise DataError(f"recipe {r.name}: {e}") from None
