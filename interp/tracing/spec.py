"""What one tracing cell patches: the kind of state, the window of layers, and the hook names.

A cell is (layer l, position p). With ``kind="resid"`` the layer axis runs over the residual
states l = 0..L (0 = embedding output, l = output of block l, before the final LayerNorm) and the
cell patches the residual state at position p. With ``kind="attn"`` / ``"mlp"`` the axis runs over
the blocks l = 0..L-1 and the cell patches that block's attention / MLP output at position p.
A window of w layers patches the same position at every layer of ``window_layers(l)``, centred
as in ROME (Meng et al. 2022): ``[l - w // 2, l + ceil(w / 2))`` clipped to the axis.
"""

from __future__ import annotations

from dataclasses import dataclass

from interp.errors import ClipInterpError

KINDS = ("resid", "attn", "mlp")
_SUBLAYER_HOOK = {"attn": "hook_attn_out", "mlp": "hook_mlp_out"}
# Poolings that read one position: a state at any other position after the last block is not read.
POSITIONAL_POOLS = ("argmax", "eos", "last", "first")


@dataclass(frozen=True)
class TraceSpec:
    """What a cell patches.

    Attributes:
        n_layers: the model's number of blocks L.
        kind: "resid" (residual state), "attn" or "mlp" (a block's sublayer output).
        window: number of consecutive layers patched per cell (1 = the reference study's).
    """

    n_layers: int
    kind: str = "resid"
    window: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ClipInterpError(f"--kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 1 <= self.window <= self.n_axis:
            raise ClipInterpError(f"--window {self.window} must be between 1 and {self.n_axis} (the layer axis)")

    @property
    def n_axis(self) -> int:
        """Length of the layer axis: L + 1 residual states, or L blocks."""
        return self.n_layers + 1 if self.kind == "resid" else self.n_layers

    def window_layers(self, layer: int) -> range:
        """The layers a cell at ``layer`` patches (ROME's centred window, clipped to the axis)."""
        if not 0 <= layer < self.n_axis:
            raise ValueError(f"layer {layer} is outside 0..{self.n_axis - 1}")
        low = max(0, layer - self.window // 2)
        high = min(self.n_axis, layer - (-self.window // 2))
        return range(low, high)

    def hook_name(self, model, layer: int) -> str:
        """The hook point holding the patched state at ``layer`` (on the forward's data path)."""
        if self.kind == "resid":
            return model.resid_hook_name(layer)
        return f"blocks.{layer}.{_SUBLAYER_HOOK[self.kind]}"

    def hook_names(self, model) -> list[str]:
        return [self.hook_name(model, layer) for layer in range(self.n_axis)]
