"""Choices and defaults of the analyses commands, free of numpy and torch so ``--help`` answers at once.

:mod:`analyses.assignment_map`, :mod:`analyses.alignment.procrustes`, :mod:`analyses.extract.pairs`
and :mod:`analyses.cli.report` import them from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

SECTIONS: tuple[str, ...] = ("cka", "layers", "matching", "alignment", "maps")  # report sections, in order
CSLS_K = 100  # CSLS neighbourhood size
DEFAULT_EXTRACT_BATCH_SIZE = 32  # image/text pairs per forward when extracting embeddings


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

    def as_dict(self) -> dict:
        return asdict(self)
