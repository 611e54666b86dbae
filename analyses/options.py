"""Choices and defaults of the analyses commands, free of numpy and torch so ``--help`` answers at once.

:mod:`analyses.assignment_map`, :mod:`analyses.alignment.procrustes`, :mod:`analyses.extract.pairs`
and :mod:`analyses.cli.report` import them from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from analyses.errors import AnalysisInputError

SECTIONS: tuple[str, ...] = ("cka", "layers", "matching", "alignment", "maps")  # report sections, in order
CSLS_K = 100  # CSLS neighbourhood size
PROTOCOLS: tuple[str, ...] = ("fixed_base", "redraw")  # matching splits: one base set, or a new base per seed
BANDWIDTHS: tuple[str, ...] = ("per_set", "shared")  # RBF local CKA bandwidth: exact per query set, or one for all
DEFAULT_EXTRACT_BATCH_SIZE = 32  # image/text pairs per forward when extracting embeddings


MAP_PRESETS: tuple[str, ...] = ("toolkit", "vlap")
PRESET_LABELS = {"toolkit": "toolkit (tuned; not VLAP's settings)", "vlap": "vlap (VLAP's released settings)"}


@dataclass(frozen=True)
class AssignmentMapConfig:
    """Training knobs. ``marginal="frequency"`` needs ``frequencies`` passed to :func:`fit_assignment_map`."""

    epochs: int = 40
    # Small training sets get extra epochs until at least this many optimizer steps were taken.
    min_steps: int = 400
    batch_size: int = 1024
    lr: float = 5e-3
    # The paper's 0.01 left the map well short of Procrustes on planted rotations here (d = 128, 8k pairs:
    # top-1 0.74 vs 1.00); 0.05 matched it (1.00). See docs/analyses.md.
    temperature: float = 0.05
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 20
    # None: max(256, 2 * target dim), capped at the training rows. Fewer prototypes than target dimensions
    # leave the map unconstrained outside their span (d = 512 with 256 prototypes: top-1 0.01).
    max_prototypes: int | None = None
    marginal: Literal["uniform", "frequency"] = "uniform"
    seed: int = 0
    # Torch intra-op threads while training (0 = leave torch's setting). The per-batch ops are small;
    # measured on 2 busy cores, multi-threaded reductions ran ~100x slower than single-threaded ones.
    threads: int = 1
    preset: str = "toolkit"  # a label only: which named settings these are (see :meth:`from_preset`)

    @classmethod
    def from_preset(cls, name: str, *, frequencies_given: bool = False, **overrides) -> "AssignmentMapConfig":
        """``"toolkit"``: the tuned defaults; ``"vlap"``: temperature 0.01, 3 prior-weighted Sinkhorn
        iterations, word-frequency marginal if ``frequencies_given`` (else uniform)."""
        if name not in MAP_PRESETS:
            raise AnalysisInputError(f"map preset {name!r} is not known: use one of {', '.join(MAP_PRESETS)}.")
        settings = {"preset": name}
        if name == "vlap":
            settings.update(temperature=0.01, sinkhorn_iters=3, marginal="frequency" if frequencies_given else "uniform")
        return cls(**{**settings, **overrides})

    def paper_settings(self) -> dict:
        """The settings VLAP fixes, in :mod:`interp.presets`' names (for the deviation list)."""
        return {"temperature": self.temperature, "sinkhorn_iterations": self.sinkhorn_iters, "marginal": self.marginal}

    def as_dict(self) -> dict:
        return asdict(self)
