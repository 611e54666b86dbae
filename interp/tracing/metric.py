"""What a tracing sweep measures on each output embedding: cosine to a direction, or any metric.

The engine scores every run's output with its row of ``TraceRuns.direction``. That row is either
a direction ``[d_embed]`` (the score is :func:`interp.data.scoring.score`, cosine scaled by the
direction's norm) or a :class:`RowMetric`, a user's callable on the output embeddings that the
engine indexes by run exactly as it indexes a direction tensor, so every path (shortcuts, fast
path, generic path, the per-cell oracle) computes it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.data.scoring import score

# metric(embedding [n, d_embed], run [n]) -> [n]: one value per output row; must act row by row.
MetricFn = Callable[[Float[Tensor, "n d_embed"], Int[Tensor, " n"]], Float[Tensor, " n"]]


@dataclass(frozen=True)
class RowMetric:
    """A metric on output embeddings, bound to the runs its rows belong to.

    ``fn(embedding, run)`` gets the output embeddings ``[n, d_embed]`` and, for each row, the index
    of the run it comes from (so a metric may depend on the pair); it returns ``[n]``.
    """

    fn: MetricFn
    runs: Int[Tensor, " n"]

    @classmethod
    def over(cls, fn: MetricFn, n_runs: int) -> "RowMetric":
        return cls(fn, torch.arange(n_runs))

    def __getitem__(self, index) -> "RowMetric":
        runs = self.runs[index.to(self.runs.device) if isinstance(index, Tensor) else index]
        return RowMetric(self.fn, runs.reshape(-1))

    def to(self, device=None, dtype=None) -> "RowMetric":  # dtype: accepted as Tensor.to's is
        return RowMetric(self.fn, self.runs.to(device) if device is not None else self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __call__(self, embedding: Float[Tensor, "n d_embed"]) -> Float[Tensor, " n"]:
        values = self.fn(embedding, self.runs.to(embedding.device))
        if not isinstance(values, Tensor) or values.shape != (embedding.shape[0],):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(
                f"the tracing metric must return one value per embedding row, shape ({embedding.shape[0]},); "
                f"got {got}: reduce over d_embed only, never over rows"
            )
        return values.to(embedding.dtype)


def run_scores(embedding: Float[Tensor, "n d_embed"], target: Float[Tensor, "n d_embed"] | RowMetric) -> Float[Tensor, " n"]:
    """Score of each output row against its run's target: a direction row or a :class:`RowMetric`."""
    if isinstance(target, RowMetric):
        return target(embedding)
    return score(embedding, target)
