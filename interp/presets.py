"""The seed papers' settings per method, and which of them a run departs from.

Every method whose defaults a seed paper defines has a ``paper`` preset (its settings below); the
toolkit's variants are named options. A run records :func:`preset_record` in its ``config.json``
and report: ``preset`` is ``"paper"`` when every recorded setting equals the paper's, else
``"custom"``, and ``deviations`` lists each differing setting as ``"name: ours (paper: theirs)"``.

Sources (see docs/fidelity.md for the measured effect of each deviation):

- ``negation_pairs``: the negation study built its minimal pairs from VALSE existence's valid items
  (``mturk.caption >= 2``: 505 items, 490 minimal pairs).
- ``negation_scoring``: the negation study (Quantmeyer et al., 2024, "How and where does CLIP process
  negation?"), which scored VALSE existence through Hugging Face's ``CLIPProcessor``, computed the
  negator attention on all items and pooled the positions after the negator by their maximum.
- ``noise_tracing``: ROME (Meng et al., 2022), noise std = 3 x the std of the corrupted (subject)
  tokens' embeddings.
- ``matching``: seed 002's seeded graph matching (RBF graph kernel, centred and scaled; a fixed base
  set with the queries redrawn per seed; RBF local CKA with the bandwidth of each augmented set).
- ``assignment_map``: VLAP (Park et al., 2024): temperature 0.01, 3 prior-weighted Sinkhorn
  iterations, word-frequency marginal.
- ``ideal_words``: Trager et al. (2023), "Linear Spaces of Meanings": uniform weights alpha = 1/n_i
  per factor (the paper's default; other weights are its "knobs" experiment).
- ``linear_probe``: probes with control tasks (Hewitt & Liang, 2019) as the toolkit's probe method
  states them for a sentence-level property: logistic regression, cross-validation folds that split
  minimal pairs (items), control labels shuffled with the class balance kept.
"""

from __future__ import annotations

from typing import Any, Mapping

PREPROCESS_PIPELINES = ("open_clip", "hf")  # image preprocessing (interp.data.images)

PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "negation_pairs": {"items": "valid"},
    "negation_scoring": {"preprocess": "hf"},
    "negator_attention": {"further_pool": "max", "attention_items": "all"},
    "noise_tracing": {"noise_calibration": "corrupted", "noise_scale": 3.0},
    "matching": {"kernel": "rbf", "protocol": "fixed_base", "local_cka_bandwidth": "per_set"},
    "assignment_map": {"temperature": 0.01, "sinkhorn_iterations": 3, "marginal": "frequency"},
    # The decomposition's default weights are 1/n_i per factor (Trager et al., Section 3). The rank is
    # not a setting: every table carries both the paper's numerical rank (rank_eps) and the effective rank.
    "ideal_words": {"alpha": "uniform"},
    # A logistic-regression probe, folds that split items so a minimal pair never straddles train and
    # test, and a control task of shuffled labels (same class balance) for this sentence-level label.
    # Hewitt & Liang's per-word-type control is the option `--control type`, recorded as a deviation.
    "linear_probe": {"classifier": "logistic_regression", "cv_grouping": "item", "control": "permuted"},
}


def deviations(method: str, chosen: Mapping[str, Any]) -> list[str]:
    """``"name: ours (paper: theirs)"`` for every setting of ``method`` in ``chosen`` that differs
    from the paper's (settings absent from ``chosen`` are not judged)."""
    paper = PAPER_SETTINGS[method]
    return [f"{name}: {chosen[name]} (paper: {value})" for name, value in paper.items()
            if name in chosen and chosen[name] != value]


def preset_record(chosen_by_method: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"preset": "paper" | "custom", "deviations": [...]}`` over several methods of one run."""
    found = [f"{method}.{d}" for method, chosen in chosen_by_method.items() for d in deviations(method, chosen)]
    return {"preset": "custom" if found else "paper", "deviations": found}


def preset_sentence(record: Mapping[str, Any]) -> str:
    """One report line naming the preset and its deviations."""
    if not record["deviations"]:
        return "Preset: `paper` (every recorded setting equals the seed paper's; see docs/fidelity.md)."
    return ("Preset: `custom`, deviating from the seed paper in: " + "; ".join(record["deviations"])
            + " (see docs/fidelity.md).")
