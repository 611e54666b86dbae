"""Turn minimal pairs into :class:`~interp.tracing.engine.TraceRuns` and runs' scores into effects.

Modes (docs/tracing.md):

- ``patch`` (the reference study's): base = A, source = N (``direction="denoise"``), or base = N,
  source = A (``"noise"``). One run per item.
- ``noise`` (ROME): the clean sentence is N; the corrupted one is N with noise on the chosen roles'
  token embeddings. ``denoise`` restores clean states into the corrupted run (base = corrupted,
  source = clean); ``noise`` writes corrupted states into the clean run. ``samples`` runs per item.

The effect of a cell is ``(mean_s S*_s - mean_s S_base_s) / (mean_s S_source_s - mean_s S_base_s)``
(for ``patch``: CTE = (S*(A) - S(A)) / (S(N) - S(A))).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.data.negation import ROLES, AlignedPair
from interp.errors import ClipInterpError
from interp.data.scoring import text_target_directions
from interp.tracing.engine import PatchedScores, TextTarget, TraceRuns
from interp.tracing.noise import draw_noise, noised_embedding_output

from interp.tracing.options import DIRECTIONS, MODES  # noqa: F401 - re-exported

TEXT_TARGET = "text"  # build_runs(..., directions=TEXT_TARGET): the N-versus-A text target


@dataclass(frozen=True)
class NoiseConfig:
    """ROME corruption settings: ``std`` is the absolute noise std (scale x embedding std)."""

    std: float
    samples: int
    roles: tuple[str, ...]
    seed: int

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ClipInterpError(f"--samples {self.samples} must be at least 1")
        unknown = [r for r in self.roles if r not in ROLES]
        if unknown or not self.roles:
            raise ClipInterpError(f"--noise-roles {','.join(self.roles)}: choose from {', '.join(ROLES)}")


def _token_batch(model, texts: list[str], expected: Sequence[Sequence[int]]):
    batch = model.to_token_batch(texts)
    for row, ids in enumerate(expected):
        got = batch.tokens[row, : len(ids)].tolist()
        if got != list(ids) or int(batch.attention_mask[row].sum()) != len(ids):
            raise ClipInterpError(
                f"the model's tokenizer turns {texts[row]!r} into {got}, not the aligned ids {list(ids)}: "
                "align the pairs with this model's tokenizer (interp.data.align_pairs(pairs, model.tokenizer))"
            )
    return batch


@torch.no_grad()
def build_runs(
    model,
    items: Sequence[AlignedPair],
    directions: Float[Tensor, "item d_embed"] | str,
    mode: str = "patch",
    direction: str = "denoise",
    noise: NoiseConfig | None = None,
) -> tuple[TraceRuns, int]:
    """Runs for ``items`` (in order) and the number of runs per item.

    ``directions`` is one score direction per item, or ``"text"`` (:data:`TEXT_TARGET`) for the text
    target ``normalize(e_N) - normalize(e_A)``: in patch mode the engine reads it from its own clean
    runs of N and A (:class:`TextTarget`, no extra forward); noise mode has no clean A run, so it is
    computed here, one batched forward of the items' N and A.
    """
    if mode not in MODES:
        raise ClipInterpError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    if direction not in DIRECTIONS:
        raise ClipInterpError(f"--direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    text_target = isinstance(directions, str)
    if text_target and directions != TEXT_TARGET:
        raise ClipInterpError(f"directions {directions!r}: pass a tensor [item, d_embed] or {TEXT_TARGET!r}")
    batch_n = _token_batch(model, [a.pair.negated for a in items], [a.tokens_negated for a in items])
    x0_n = model(batch_n, stop_at_layer=0)
    batch_a = _token_batch(model, [a.pair.affirmative for a in items], [a.tokens_affirmative for a in items])
    if mode == "patch":
        x0_a = model(batch_a, stop_at_layer=0)
        base, source = (x0_a, x0_n) if direction == "denoise" else (x0_n, x0_a)
        tokens = batch_a if direction == "denoise" else batch_n
        if text_target:
            return TraceRuns(tokens, base, source, TextTarget("source" if direction == "denoise" else "base")), 1
        return TraceRuns(tokens, base, source, directions.to(model.device, model.dtype)), 1
    if text_target:
        directions = text_target_directions(model(batch_n), model(batch_a))
    directions = directions.to(model.device, model.dtype)
    if noise is None:
        raise ClipInterpError("--mode noise needs noise settings (scale, samples, roles)")
    n_samples = noise.samples
    repeat = torch.arange(len(items)).repeat_interleave(n_samples)
    batch = batch_n[repeat]
    positions, draws = [], []
    for item in items:
        pos = [p for role in noise.roles for p in item.positions(role)]
        for sample in range(n_samples):
            positions.append(pos)
            draws.append(draw_noise(noise.seed, item.pair.item_id, sample, len(pos), model.cfg.d_model, noise.std))
    corrupted = noised_embedding_output(model, batch, positions, draws)
    clean = x0_n[repeat.to(x0_n.device)]
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    return TraceRuns(batch, base, source, directions[repeat.to(directions.device)]), n_samples


def effects(result: PatchedScores, runs_per_item: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per item: effect ``[item, axis, pos]``, mean patched score, mean base and source scores."""
    n_runs, n_axis, n_pos = result.patched.shape
    shape = (n_runs // runs_per_item, runs_per_item)
    patched = result.patched.reshape(*shape, n_axis, n_pos).mean(1)
    base = result.base.reshape(shape).mean(1)
    source = result.source.reshape(shape).mean(1)
    effect = (patched - base[:, None, None]) / (source - base)[:, None, None]
    return effect, patched, base, source
