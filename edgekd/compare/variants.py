"""What a comparison runs: variants, seeds and every run's recipe, checked before any training. Torch-free.

A variant is a method name with optional recipe overrides joined by ':', e.g.
`bdkd:weighting=soft:temperature=2` or `ce:optim.label_smoothing=0.1`. A key
without a dot is a `distill.` key; a dotted key of any section (data., teacher.,
student., distill., optim., teacher_optim., train., validate.) is used as is.
A label ending in `+ts` (`ce+ts`) is a post-hoc row: the runs of the variant
before `+ts`, their student logits divided by a temperature fitted on each run's
tune split. It trains nothing of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import DataError, RecipeError
from edgekd.recipe import Recipe, load_recipe

POSTHOC_SUFFIX = "+ts"
EVAL_SPLITS = ("val", "tune", "test")


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    overrides: tuple[str, ...]
    # Post-hoc temperature scaling of the runs of `base` (a label); None for a trained variant.
    base: str | None = None

    @property
    def slug(self) -> str:
        """File-name form of the label; a +ts row has none of its own (it reads its base's files)."""
        label = self.base if self.base is not None else self.label
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label.replace(":", "-"))

    @property
    def trained(self) -> bool:
        return self.base is None


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
        overrides.append(f"{key if '.' in key else 'distill.' + key}={value}")
    return Variant(item, method, tuple(overrides))


def parse_variants(spec: list[str]) -> list[Variant]:
    """Labels in the order given. A `+ts` row also trains its base variant's runs (listed or not)."""
    out: list[Variant] = []
    for item in spec:
        if item.endswith(POSTHOC_SUFFIX):
            base = _parse_one(item[: -len(POSTHOC_SUFFIX)])
            out.append(Variant(item, base.method, base.overrides, base=base.label))
        else:
            out.append(_parse_one(item))
    if len({v.label for v in out}) != len(out):
        raise RecipeError("--methods lists the same variant twice")
    trained = {v.slug: v for v in out if v.trained}
    for v in out:
        other = trained.get(v.slug)
        if v.trained and other is not v:
            raise RecipeError(f"--methods: {other.label!r} and {v.label!r} would share the run folder name "
                              f"{v.slug!r}; write one of them differently")
    return out


def trained_variants(variants: list[Variant]) -> list[Variant]:
    """The variants that have runs: every trained label, plus the base of each +ts row, once each."""
    out: dict[str, Variant] = {}
    for v in variants:
        key = v.slug
        if key not in out:
            out[key] = v if v.trained else Variant(v.base, v.method, v.overrides)
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
            r = load_recipe(recipe_path, [*overrides, *v.overrides, f"train.seed={seed}"])
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
        if v.trained:
            continue
        if eval_split == "tune":
            raise RecipeError(f"{v.label!r} fits its temperature on the tune split, so it cannot also be "
                              f"evaluated there; use --eval-split val or test")
        for base, _seed, r in runs:
            if base.label == v.base and split_count(r, "tune") == 0:
                raise RecipeError(f"{v.label!r} fits a temperature on each run's tune split, and the recipe has "
                                  f"none; set data.tune_fraction or data.tune_size (e.g. --set data.tune_fraction=0.1)")


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
