"""Recipes: which compression steps, in which order, with which fixed settings, toward which target. Pure data.

A recipe is one schema with three spellings: a YAML (or JSON) file, `--set key=value` on the command line, and
`Recipe(...)` in Python. `Recipe.from_dict` validates any of them with one clear error per mistake, and
`as_dict` writes the resolved recipe back, so that a run directory keeps exactly what ran.

    objective: size              # size | latency-b1 | latency-b256
    drop: 0.01                   # or target: 0.90 (validation accuracy)
    steps:                       # in order; the search chooses each step's strength
      - prune: {method: l1}      # structured channel pruning (or method: pca, fpgm, slimming, l2)
      - deep-compress: {conv_bits: 6, fc_bits: 5}
    search: {strategy: bisect, step: 0.05, max_ratio: 0.95, recalibrate: 512}
    finetune: {final_epochs: 1, distill: response}

The step kinds are the methods the families register (`cnnzip.methods`): name, settings (a frozen dataclass that
checks itself), the search axis of its strength, and the file the recipe then writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..deep import DeepCompressStep  # (importing a family registers its step)
from ..errors import ConfigError
from ..lowrank import DecomposeStep
from ..methods import METHODS, by_axis, orders
from ..prune import PruneStep
from ..quantize import QuantizeStep
from .candidates import Pipeline
from .run import OBJECTIVES, SearchConfig
from .strategies import STRATEGIES

__all__ = ["Recipe", "STEPS", "SearchSettings", "FinetuneSettings", "DEFAULT_RECIPES", "default_recipe",
           "recipe_from_file", "apply_overrides", "PruneStep", "DeepCompressStep", "DecomposeStep", "QuantizeStep"]


# ---------------------------------------------------------------- the step kinds

# Each family registers its step (`cnnzip.methods`); importing the families here makes them all present.
STEPS = METHODS


def _step_of(axis: str) -> str:
    return by_axis(axis).name


# ---------------------------------------------------------------- the rest of a recipe


@dataclass(frozen=True)
class SearchSettings:
    """How the strengths are searched (`SearchConfig`)."""

    strategy: str = "bisect"
    step: float = 0.05
    max_ratio: float = 0.95
    margin: int = 5
    recalibrate: int = 512

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"search.strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if not (_number(self.step) and _number(self.max_ratio) and 0 < self.step <= self.max_ratio < 1):
            raise ConfigError(f"search needs 0 < step <= max_ratio < 1; got step {self.step!r}, max_ratio "
                              f"{self.max_ratio!r}")
        if not _number(self.margin) or not isinstance(self.margin, int) or self.margin < 0:
            raise ConfigError(f"search.margin must be an integer >= 0; got {self.margin!r}")
        if not isinstance(self.recalibrate, int) or isinstance(self.recalibrate, bool) or self.recalibrate < 0:
            raise ConfigError(f"search.recalibrate is a number of training images (0: none); got "
                              f"{self.recalibrate!r}")


@dataclass(frozen=True)
class FinetuneSettings:
    """How the winner is fine-tuned: epochs after its structured step (before deep compression), after its last
    pruning step, and of its shared centroids; the learning rate; distillation from the starting model."""

    structured_epochs: int = 0
    final_epochs: int = 0
    centroid_epochs: int = 0
    lr: float = 0.01
    distill: str | None = None

    def __post_init__(self) -> None:
        for name in ("structured_epochs", "final_epochs", "centroid_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"finetune.{name} must be an integer >= 0; got {value!r}")
        if not _number(self.lr) or not self.lr > 0:
            raise ConfigError(f"finetune.lr must be > 0; got {self.lr!r}")
        if self.distill not in (None, "response"):
            raise ConfigError(f"finetune.distill must be response (soft targets from the starting model) or "
                              f"nothing; got {self.distill!r}")
        if self.distill and not self.epochs:
            raise ConfigError("finetune.distill changes how the winner is fine-tuned: give it epochs too")

    @property
    def epochs(self) -> int:
        return self.structured_epochs + self.final_epochs + self.centroid_epochs


@dataclass(frozen=True)
class Recipe:
    """Steps in order (kind, settings), the objective and target, and the search and fine-tune settings."""

    steps: tuple[tuple[str, Any], ...] = (("prune", PruneStep()), ("deep-compress", DeepCompressStep()))
    objective: str = "size"
    drop: float | None = 0.01
    target: float | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    def __post_init__(self) -> None:
        steps = []
        for kind, settings in self.steps:
            if kind not in STEPS:
                raise ConfigError(f"unknown step {kind!r}; recipes take {', '.join(STEPS)}")
            if not isinstance(settings, STEPS[kind].settings):
                raise ConfigError(f"step {kind!r} takes {STEPS[kind].settings.__name__} settings")
            steps.append((kind, settings))
        object.__setattr__(self, "steps", tuple(steps))
        kinds = [k for k, _ in steps]
        if not kinds:
            raise ConfigError("a recipe needs at least one step")
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise ConfigError(f"step {kind!r} appears {kinds.count(kind)} times; a recipe takes each step once")
        for i, kind in enumerate(kinds[:-1]):
            if not STEPS[kind].float_weights and STEPS[kinds[i + 1]].float_weights:
                raise ConfigError(f"step {kinds[i + 1]!r} changes float weights, so it cannot follow {kind!r}, "
                                  f"which makes a quantized file: put {kind!r} last")
        searched = [k for k in kinds if STEPS[k].axis]
        if not searched:
            raise ConfigError("a recipe needs a step whose strength the search chooses (prune, decompose or "
                              "deep-compress); for int8 alone, use `cnnzip quantize`")
        if len(searched) > 2:
            raise ConfigError(f"the search turns at most two strengths at once; this recipe has {len(searched)} "
                              f"({', '.join(searched)})")
        order = "-".join(STEPS[k].axis for k in searched)
        if searched and order not in orders():
            raise ConfigError(f"steps {' then '.join(searched)} cannot run in that order; searchable orders: "
                              + "; ".join(" then ".join(_step_of(a) for a in o.split("-")) for o in orders()))
        if "quantize" in kinds and "deep-compress" in kinds:
            raise ConfigError("an int8 file stores dense weights, so deep compression's zeros and shared values "
                              "would not shrink it: use prune then quantize, or prune then deep-compress")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.objective != "size" and "deep-compress" in kinds:
            raise ConfigError("deep compression's zeros do not make ONNX Runtime faster: a latency objective takes "
                              "prune (and quantize) steps")
        if (self.drop is None) == (self.target is None):
            raise ConfigError("give exactly one of drop (points below the baseline, e.g. 0.01) and target (an "
                              "accuracy, e.g. 0.9)")
        if self.drop is not None and not (_number(self.drop) and 0 <= self.drop < 1):
            raise ConfigError(f"drop must be in [0, 1); got {self.drop!r}")
        if self.target is not None and not (_number(self.target) and 0 < self.target <= 1):
            raise ConfigError(f"target must be an accuracy in (0, 1]; got {self.target!r}")
        if self.finetune.structured_epochs and kinds[:2] != ["prune", "deep-compress"]:
            raise ConfigError("finetune.structured_epochs fine-tunes between prune and deep-compress: the recipe "
                              "needs those two steps in that order")
        if self.finetune.centroid_epochs and "deep-compress" not in kinds:
            raise ConfigError("finetune.centroid_epochs trains deep compression's shared values: add a "
                              "deep-compress step")

    def settings(self, kind: str) -> Any:
        return dict(self.steps).get(kind)

    @property
    def writes(self) -> str:
        """The suffix of the file this recipe ships: its last step's."""
        return STEPS[self.steps[-1][0]].writes

    # ------------------------------------------------------------ spellings

    def as_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, **({"drop": self.drop} if self.drop is not None else
                                                {"target": self.target}),
                "steps": [{kind: asdict(settings)} for kind, settings in self.steps],
                "search": asdict(self.search), "finetune": asdict(self.finetune)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a recipe is a mapping of objective, drop or target, steps, search and finetune; got "
                              f"{type(data).__name__}")
        _known(data, {"objective", "drop", "target", "steps", "search", "finetune"}, "the recipe")
        steps = data.get("steps", [{"prune": {}}, {"deep-compress": {}}])
        if isinstance(steps, str):  # "prune,deep-compress": each with its default settings
            steps = [s.strip() for s in steps.split(",") if s.strip()]
        if not isinstance(steps, list):
            raise ConfigError("steps is a list of steps, e.g. [prune, deep-compress]")
        parsed = []
        for step in steps:
            if isinstance(step, str):
                step = {step: {}}
            if not (isinstance(step, Mapping) and len(step) == 1):
                raise ConfigError(f"each step is a kind with its settings, e.g. {{prune: {{method: l1}}}}; got "
                                  f"{step!r}")
            (kind, settings), = step.items()
            if kind not in STEPS:
                raise ConfigError(f"unknown step {kind!r}; recipes take {', '.join(STEPS)}")
            parsed.append((kind, _build(STEPS[kind].settings, settings or {}, kind)))
        target = data.get("target")
        drop = data.get("drop", None if target is not None else 0.01)
        return cls(steps=tuple(parsed), objective=data.get("objective", "size"), drop=drop, target=target,
                   search=_build(SearchSettings, data.get("search") or {}, "search"),
                   finetune=_build(FinetuneSettings, data.get("finetune") or {}, "finetune"))

    def to_search(self, max_checks: int | None = None, time_budget: float | None = None) -> SearchConfig:
        """The search this recipe runs."""
        prune, deep, quant = self.settings("prune"), self.settings("deep-compress"), self.settings("quantize")
        order = "-".join(STEPS[k].axis for k, _ in self.steps if STEPS[k].axis)
        pipeline = Pipeline(order=order, structured=prune.method if prune else "l1",
                            conv_bits=deep.conv_bits if deep else 8, fc_bits=deep.fc_bits if deep else 5,
                            quantize="int8" if quant else None, round_to=prune.round_to if prune else 1,
                            residual_stream=not prune.inner_only if prune else True,
                            recalibrate=self.search.recalibrate)
        return SearchConfig(pipeline=pipeline, strategy=self.search.strategy, target=self.target, drop=self.drop,
                            step=self.search.step, max_ratio=self.search.max_ratio, margin=self.search.margin,
                            max_checks=max_checks, time_budget=time_budget, objective=self.objective)


def _number(value: Any) -> bool:
    """A real number: YAML's true/false are ints to Python, and never a setting's number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _known(data: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where} has no setting {unknown[0]!r}; it takes {', '.join(sorted(allowed))}")


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} takes a mapping of settings; got {values!r}")
    _known(values, {f.name for f in fields(cls)}, where)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


# ---------------------------------------------------------------- defaults, files, overrides

# What wins in BENCHMARKS.md. Size: prune then deep-compress with recalibrated trials (the combined search
# found files 3-7% smaller than deep compression alone from -3 points on ResNet-56, and the same file at -1).
# Latency: prune then int8 (int8 gives 2.1-2.5x in ONNX Runtime; the latency objective keeps only pruning that
# pays in measured time).
DEFAULT_RECIPES: dict[str, Callable[[], Recipe]] = {
    "size": lambda: Recipe(),
    "latency-b1": lambda: Recipe(steps=(("prune", PruneStep(round_to=8)), ("quantize", QuantizeStep())),
                                 objective="latency-b1"),
    "latency-b256": lambda: Recipe(steps=(("prune", PruneStep(round_to=8)), ("quantize", QuantizeStep())),
                                   objective="latency-b256"),
}


def default_recipe(objective: str = "size") -> Recipe:
    if objective not in DEFAULT_RECIPES:
        raise ConfigError(f"objective must be one of {', '.join(DEFAULT_RECIPES)}; got {objective!r}")
    return DEFAULT_RECIPES[objective]()


def recipe_from_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML or JSON recipe file holds (safe loading: a file cannot build objects or run code)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--recipe {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text) or {}
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"--recipe {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{str(exc).splitlines()[0]}") from exc
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError and its kin
        raise ConfigError(f"--recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`key=value` settings over a recipe mapping: `drop=0.02`, `search.step=0.1`, `finetune.final_epochs=2`,
    `steps=prune,quantize`, `prune.method=fpgm` (a step's setting, by the step's name). Values are YAML scalars."""
    import yaml

    data = json.loads(json.dumps(data))  # a deep copy
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: give key=value, e.g. search.step=0.1")
        try:
            value = _scalar(text, yaml)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"--set {item!r}: {text!r} is not a value") from exc
        steps = data.get("steps", [{"prune": {}}, {"deep-compress": {}}])  # (Recipe.from_dict's default)
        if isinstance(steps, str):
            steps = [s.strip() for s in steps.split(",") if s.strip()]
        data["steps"] = steps
        head, _, rest = key.partition(".")
        if not rest:
            if head == "drop":
                data.pop("target", None)
            if head == "target":
                data.pop("drop", None)
            data[head] = value
        elif head in STEPS:
            steps = [s if isinstance(s, dict) else {s: {}} for s in data["steps"]]
            match = [s for s in steps if head in s]
            if not match:
                raise ConfigError(f"--set {item!r}: the recipe has no {head!r} step (steps: "
                                  f"{', '.join(next(iter(s)) for s in steps) or 'none'})")
            match[0][head] = {**(match[0][head] or {}), rest: value}
            data["steps"] = steps
        else:
            section = data.setdefault(head, {})
            if not isinstance(section, dict):
                raise ConfigError(f"--set {item!r}: {head} is not a section of the recipe")
            section[rest] = value
    return data


def _scalar(text: str, yaml) -> Any:
    """A command-line value: an int, a float (1e-3 included, which YAML 1.1 reads as text), else a YAML scalar."""
    if not text:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)

