"""Factored concept sets Z = Z_1 x ... x Z_k and their prompts (Trager et al., "Linear Spaces of Meanings").

A :class:`ConceptSet` names its factors (each with at least two distinct values), a prompt template with
one ``{factor}`` placeholder per factor, and optionally one single-word template per factor (needed for
the real-word baseline RW). Combinations are enumerated in row-major order over the factors, so the
embedding of combination ``(i_1, ..., i_k)`` sits at ``grid[i_1, ..., i_k]`` and at row
``np.ravel_multi_index((i_1, ..., i_k), shape)`` of the flat table.

Built-in sets ship as YAML files in ``probes/concept_sets/``; users pass their own YAML/JSON with the same
keys (see docs/probes.md).
"""

from __future__ import annotations

from interp.errors import ClipInterpError

import itertools
import json
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

BUILTIN_PACKAGE = "probes.concept_sets"


class ConceptSetError(ClipInterpError, ValueError):
    """A concept set (or idiom test) file or dict is malformed; the message names the fix."""


@dataclass(frozen=True)
class Factor:
    """One factor of a concept set: a name (the template placeholder) and at least two distinct values."""

    name: str
    values: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class ConceptSet:
    """A factored concept set with its prompt templates.

    Attributes:
        name: short identifier used in tables.
        factors: the factors, in grid-axis order.
        template: prompt with one ``{name}`` placeholder per factor, e.g. ``"a photo of a {colour} {object}"``.
        single_templates: optional ``{factor name: template with only that placeholder}`` for the
            real-word (RW) baseline; RW is reported only when every factor has one.
        description: free text for the report.
        source: where the set came from (built-in name or file path).
    """

    name: str
    factors: tuple[Factor, ...]
    template: str
    single_templates: dict[str, str] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(f.size for f in self.factors)

    @property
    def factor_names(self) -> list[str]:
        return [f.name for f in self.factors]

    @property
    def n_combinations(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def rank_bound(self) -> int:
        """Upper bound on the dimension of the span of a decomposable set: 1 + sum_i (n_i - 1)."""
        return 1 + sum(s - 1 for s in self.shape)

    @property
    def has_single_words(self) -> bool:
        return all(f.name in self.single_templates for f in self.factors)

    def combinations(self) -> list[tuple[str, ...]]:
        """Every combination of values, row-major over the factors."""
        return list(itertools.product(*(f.values for f in self.factors)))

    def prompts(self) -> list[str]:
        """One prompt per combination, in :meth:`combinations` order."""
        names = self.factor_names
        return [self.template.format(**dict(zip(names, combo))) for combo in self.combinations()]

    def single_word_prompts(self, factor: str) -> list[str]:
        """Single-word prompts of one factor (one per value), e.g. ``"a photo of a red object"``."""
        if factor not in self.single_templates:
            raise ConceptSetError(
                f"concept set {self.name!r} has no single-word template for factor {factor!r}: add "
                f"single_templates: {{{factor}: '... {{{factor}}} ...'}} to compute RW"
            )
        values = self.factor(factor).values
        return [self.single_templates[factor].format(**{factor: v}) for v in values]

    def factor(self, name: str) -> Factor:
        for f in self.factors:
            if f.name == name:
                return f
        raise ConceptSetError(
            f"concept set {self.name!r} has no factor {name!r}; its factors are {self.factor_names}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "template": self.template,
            "factors": [{"name": f.name, "values": list(f.values)} for f in self.factors],
            "single_templates": dict(self.single_templates),
            "source": self.source,
        }


def _placeholders(template: str) -> list[str]:
    try:
        return [fname for _, fname, _, _ in string.Formatter().parse(template) if fname is not None]
    except ValueError as exc:
        raise ConceptSetError(f"template {template!r} is not a valid format string: {exc}") from exc


def _validate(cs: ConceptSet) -> None:
    where = f"concept set {cs.name!r}" + (f" ({cs.source})" if cs.source else "")
    if not cs.factors:
        raise ConceptSetError(f"{where} has no factors: give at least one factor with two values")
    seen: set[str] = set()
    for f in cs.factors:
        if not f.name or not f.name.isidentifier():
            raise ConceptSetError(
                f"{where}: factor name {f.name!r} must be a non-empty identifier (used as a "
                "{placeholder} in the template)"
            )
        if f.name in seen:
            raise ConceptSetError(f"{where}: factor name {f.name!r} appears twice; rename one")
        seen.add(f.name)
        if len(f.values) < 2:
            raise ConceptSetError(
                f"{where}: factor {f.name!r} has {len(f.values)} value(s) {list(f.values)}; a factor "
                "needs at least two values to be decomposed (drop the factor and put the value "
                "into the template instead)"
            )
        dupes = sorted({v for v in f.values if f.values.count(v) > 1})
        if dupes:
            raise ConceptSetError(f"{where}: factor {f.name!r} repeats value(s) {dupes}; list each once")
        for v in f.values:
            if not isinstance(v, str) or not v.strip():
                raise ConceptSetError(f"{where}: factor {f.name!r} has an empty or non-string value {v!r}")
    used = _placeholders(cs.template)
    missing = [n for n in cs.factor_names if n not in used]
    extra = sorted(set(used) - seen)
    if missing:
        raise ConceptSetError(
            f"{where}: template {cs.template!r} has no placeholder for factor(s) {missing}; write "
            f"e.g. 'a photo of a " + " ".join("{" + n + "}" for n in cs.factor_names) + "'"
        )
    if extra:
        raise ConceptSetError(
            f"{where}: template {cs.template!r} uses placeholder(s) {extra} that are not factors "
            f"{cs.factor_names}"
        )
    for fname, tmpl in cs.single_templates.items():
        if fname not in seen:
            raise ConceptSetError(
                f"{where}: single_templates names factor {fname!r}, which is not one of {cs.factor_names}"
            )
        if _placeholders(tmpl) != [fname]:
            raise ConceptSetError(
                f"{where}: single-word template {tmpl!r} must contain exactly one placeholder "
                f"{{{fname}}} and no other"
            )


def concept_set_from_dict(data: dict[str, Any], source: str = "") -> ConceptSet:
    """Build a :class:`ConceptSet` from the YAML/JSON layout documented in docs/probes.md."""
    if not isinstance(data, dict):
        raise ConceptSetError(f"concept set {source or ''} must be a mapping, got {type(data).__name__}")
    for key in ("name", "template", "factors"):
        if key not in data:
            raise ConceptSetError(
                f"concept set {source or data.get('name', '?')!r} has no {key!r} key; required keys are "
                "name, template, factors (list of {name, values})"
            )
    factors = []
    for i, f in enumerate(data["factors"]):
        if not isinstance(f, dict) or "name" not in f or "values" not in f:
            raise ConceptSetError(
                f"concept set {data['name']!r}: factor {i} must be a mapping with 'name' and 'values', got {f!r}"
            )
        if isinstance(f["values"], str) or not isinstance(f["values"], (list, tuple)):
            raise ConceptSetError(
                f"concept set {data['name']!r}: factor {f['name']!r} values must be a list, got {f['values']!r}"
            )
        factors.append(Factor(name=str(f["name"]), values=tuple(f["values"])))
    return ConceptSet(
        name=str(data["name"]),
        factors=tuple(factors),
        template=str(data["template"]),
        single_templates={str(k): str(v) for k, v in (data.get("single_templates") or {}).items()},
        description=str(data.get("description", "")),
        source=source,
    )


def _read_mapping(path: Path) -> Any:
    if not path.is_file():
        raise ConceptSetError(f"concept set file {path} not found: pass an existing .yaml/.yml/.json file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConceptSetError(f"concept set file {path} could not be parsed: {exc}") from exc


def builtin_names() -> list[str]:
    """Names of the concept sets shipped in ``probes/concept_sets/`` (idiom tests excluded)."""
    root = resources.files(BUILTIN_PACKAGE)
    return sorted(
        p.name.rsplit(".", 1)[0]
        for p in root.iterdir()
        if p.name.endswith((".yaml", ".yml", ".json")) and not p.name.startswith("idiom")
    )


def load_concept_set(name_or_path: str | Path) -> ConceptSet:
    """Load a built-in concept set by name (see :func:`builtin_names`) or a user YAML/JSON file."""
    path = Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        data = _read_mapping(path)
        return concept_set_from_dict(data, source=str(path))
    names = builtin_names()
    if str(name_or_path) not in names:
        raise ConceptSetError(
            f"unknown concept set {str(name_or_path)!r}: use a built-in name {names} or a path to a "
            ".yaml/.json file"
        )
    text = resources.files(BUILTIN_PACKAGE).joinpath(f"{name_or_path}.yaml").read_text(encoding="utf-8")
    return concept_set_from_dict(yaml.safe_load(text), source=f"builtin:{name_or_path}")


@dataclass(frozen=True)
class IdiomTest:
    """An idiom test: a concept set whose combinations include idioms, and a literal control set."""

    name: str
    idiom: ConceptSet
    control: ConceptSet
    note: str = ""


def load_idiom_tests(path: str | Path | None = None) -> list[IdiomTest]:
    """Idiom tests from ``probes/concept_sets/idioms.yaml`` (default) or a user file of the same layout."""
    if path is None:
        text = resources.files(BUILTIN_PACKAGE).joinpath("idioms.yaml").read_text(encoding="utf-8")
        data, source = yaml.safe_load(text), "builtin:idioms"
    else:
        data, source = _read_mapping(Path(path)), str(path)
    tests = data.get("tests") if isinstance(data, dict) else None
    if not tests:
        raise ConceptSetError(f"idiom file {source} needs a 'tests' list of {{name, idiom, control}} entries")
    out = []
    for t in tests:
        if not all(k in t for k in ("name", "idiom", "control")):
            raise ConceptSetError(f"idiom test {t.get('name', '?')!r} in {source} needs keys name, idiom, control")
        out.append(
            IdiomTest(
                name=str(t["name"]),
                idiom=concept_set_from_dict(t["idiom"], source=source),
                control=concept_set_from_dict(t["control"], source=source),
                note=str(t.get("note", "")),
            )
        )
    return out
