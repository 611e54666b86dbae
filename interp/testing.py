"""Hand-built ("planted") encoders whose right answer is known, to prove analyses find it.

:func:`build_negator_copy_encoder` makes a small causal CLIP-like text encoder (real CLIP tokenizer)
in which exactly one attention head, at one known layer, reads a "negation" flag from the negator
token ("no") and writes it into a "carried" dimension at every later position. Every other block
is the identity (all output weights zero) and one head at the copy layer does nothing. Hence, for
a VALSE minimal pair (N with "no", A with "some"/"a" at the same position):

- patching the negator's state at any layer up to the copy layer carries the whole N-vs-A gap
  (CTE = 1), and patching any later position there carries none (CTE = 0);
- after the copy layer, only EOT matters (CTE(EOT) = 1, every other position 0);
- the copy head is the only head whose attention to the negator differs between N and A, whose
  ablation changes the score, and whose direct effect is non-zero; the idle head's is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.models.config import TextEncoderConfig
from interp.models.text_encoder import HookedTextEncoder
from interp.models.tokenization import CLIPTokenizer

# Residual dimensions with a planted meaning; the rest hold random token/position content.
NEG_DIM = 0  # 1 on the negator token "no"
SLOT_DIM = 1  # 1 on every token that can fill the negator slot ("no", "some", "a")
CARRIED_DIM = 2  # where the copy head writes the negation flag
_CONTENT_DIMS_START = 3
_SLOT_WORDS = ("no", "some", "a", "an")


@dataclass
class PlantedEncoder:
    """A planted encoder and the facts a test may assert about it (layers and heads 0-indexed)."""

    model: HookedTextEncoder
    copy_layer: int  # block whose head copies the negator; its effect shows at state copy_layer + 1
    copy_head: int
    idle_head: int  # a head at copy_layer that provably does nothing
    negator_token_id: int


def _word_id(tokenizer: CLIPTokenizer, word: str) -> int:
    ids = tokenizer.encode(word)[1:-1]
    if len(ids) != 1:
        raise ValueError(f"{word!r} is not one CLIP token")
    return ids[0]


@torch.no_grad()
def build_negator_copy_encoder(
    n_layers: int = 4,
    copy_layer: int = 2,
    n_heads: int = 2,
    copy_head: int = 0,
    d_model: int = 16,
    attention_gain: float = 40.0,
    seed: int = 0,
) -> PlantedEncoder:
    """Build the planted negator-copy encoder described in the module docstring.

    Args:
        n_layers, n_heads, d_model: sizes (d_model >= 8, n_heads >= 2).
        copy_layer, copy_head: where the copying head sits (0-indexed).
        attention_gain: how sharply the copy head's queries attend to the slot token.
        seed: seed of the random content embeddings.
    """
    if not 0 <= copy_layer < n_layers:
        raise ValueError(f"copy_layer={copy_layer} is outside 0..{n_layers - 1}")
    if not 0 <= copy_head < n_heads or n_heads < 2:
        raise ValueError(f"need n_heads >= 2 and copy_head in 0..{n_heads - 1}")
    if d_model < 8 or d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be >= 8 and divisible by n_heads={n_heads}")
    tokenizer = CLIPTokenizer()
    cfg = TextEncoderConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=4 * d_model, n_ctx=77,
        d_vocab=tokenizer.vocab_size, d_embed=d_model, act_fn="gelu", causal=True, norm="pre",
        pool="argmax", model_name="planted-negator-copy", pretrained=f"hand-built (seed {seed})",
    )
    model = HookedTextEncoder(cfg, tokenizer)
    for param in model.parameters():
        param.zero_()
    generator = torch.Generator().manual_seed(seed)
    content = slice(_CONTENT_DIMS_START, d_model)
    n_content = d_model - _CONTENT_DIMS_START
    model.embed.W_E[:, content] = torch.randn(cfg.d_vocab, n_content, generator=generator)
    model.embed.W_pos[:, content] = 0.5 * torch.randn(cfg.n_ctx, n_content, generator=generator)
    negator_id = _word_id(tokenizer, "no")
    for word in _SLOT_WORDS:
        model.embed.W_E[_word_id(tokenizer, word), SLOT_DIM] = 3.0
    model.embed.W_E[negator_id, NEG_DIM] = 3.0
    for layer_norm in [*(b.ln1 for b in model.blocks), *(b.ln2 for b in model.blocks), model.ln_final]:
        layer_norm.w.fill_(1.0)

    attn = model.blocks[copy_layer].attn
    # Copy head: a constant query matched by keys that carry the slot flag, so every query after
    # the slot attends to it; the value reads the negation flag and W_O writes it to CARRIED_DIM.
    attn.b_Q[copy_head, 0] = attention_gain
    attn.W_K[copy_head, SLOT_DIM, 0] = 1.0
    attn.W_V[copy_head, NEG_DIM, 0] = 1.0
    attn.W_O[copy_head, 0, CARRIED_DIM] = 4.0
    # Idle head: uniform attention and a value, but W_O = 0: nothing reaches the residual.
    idle_head = (copy_head + 1) % n_heads
    attn.W_V[idle_head] = torch.randn(d_model, cfg.d_head, generator=generator)

    model.W_proj.copy_(torch.eye(d_model))
    model.logit_scale.fill_(float(torch.log(torch.tensor(100.0))))
    return PlantedEncoder(model.eval(), copy_layer, copy_head, idle_head, negator_id)


@torch.no_grad()
def build_negator_selective_encoder(**kwargs) -> PlantedEncoder:
    """The negator-copy encoder with a copy head that attends to the negator only when it is "no".

    In :func:`build_negator_copy_encoder` the copy head's keys read the slot flag, so it attends to
    the slot in N and in A alike (its a_N - a_A is 0). Here its keys read the negation flag instead:
    in N every later query attends to "no" (weight ~1); in A no key carries the flag and its weight
    on the slot is near 0. The value still reads the negation flag, so the head's output (and hence its
    ablation and direct effects) are unchanged: it is the only head with a non-zero negator-selective
    attention score, ablation effect and direct effect, and the idle head's are exactly 0.
    Takes the same arguments as :func:`build_negator_copy_encoder`.
    """
    planted = build_negator_copy_encoder(**kwargs)
    attn = planted.model.blocks[planted.copy_layer].attn
    attn.W_K[planted.copy_head, SLOT_DIM, 0] = 0.0
    attn.W_K[planted.copy_head, NEG_DIM, 0] = 1.0
    planted.model.cfg.model_name = "planted-negator-selective"
    return planted


class _IdentityNorm(torch.nn.Module):
    """Stands in for a LayerNorm in :func:`build_linear_encoder`: returns its input (hooked)."""

    def __init__(self):
        super().__init__()
        from transformer_lens.hook_points import HookPoint

        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(x)


def random_clip_text_encoder(n_layers: int = 12, d_model: int = 512, n_heads: int = 8, seed: int = 0,
                             name: str = "random-clip-text") -> HookedTextEncoder:
    """A random-init CLIP-shaped text tower (causal, pre-LN, EOT pooling, QuickGELU, MLP 4 x d_model)
    of any size, built directly (no open_clip model, no image tower): ViT-B-32's text tower's sizes by
    default, for tests that need real depth and width without loading anything."""
    cfg = TextEncoderConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=4 * d_model, n_ctx=77,
                            d_vocab=49408, d_embed=d_model, act_fn="quick_gelu", model_name=name, pretrained=None)
    model = HookedTextEncoder(cfg, CLIPTokenizer())
    model.init_weights(seed=seed)
    return model.eval()


@torch.no_grad()
def build_linear_encoder(seed: int = 0, n_layers: int = 3, d_model: int = 32, n_heads: int = 4,
                         dtype: torch.dtype = torch.float64) -> HookedTextEncoder:
    """A causal CLIP-like encoder whose output is an affine function of every activation.

    Every LayerNorm is the identity; queries and keys are zero, so each head attends uniformly to
    the positions up to its own (a fixed pattern: attention is linear in the values); the MLP's
    ReLU sits on pre-activations shifted far above zero, where it is the identity. Output, head
    and MLP weights are random, so every head, block and position has a distinct, non-zero
    effect, and first-order attribution (AtP) is exact on it under any affine metric.
    """
    cfg = TextEncoderConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=2 * d_model, n_ctx=77, d_vocab=49408,
        d_embed=d_model // 2, act_fn="relu", model_name="planted-linear", pretrained=f"hand-built (seed {seed})",
    )
    model = HookedTextEncoder(cfg, CLIPTokenizer(), init=False)
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    for block in model.blocks:
        block.attn.W_Q.zero_()
        block.attn.W_K.zero_()
        block.mlp.b_in.fill_(1e3)  # |x @ W_in| stays far below this: ReLU = identity
        block.mlp.b_out.copy_(-(block.mlp.b_in @ block.mlp.W_out))  # cancel the shift (kept small residuals)
        block.ln1, block.ln2 = _IdentityNorm(), _IdentityNorm()
    model.ln_final = _IdentityNorm()
    model.setup()  # register the replaced modules' hooks
    return model.to(dtype).eval()


# ----------------------------------------------------------------------------- image side

# Residual dimensions of the planted image encoder.
RED_DIM = 0  # how red a patch is (read by the planted head's keys and values)
OUT_DIM = 1  # where the planted head writes
CLS_DIM = 2  # marks the class token (keeps its ln_post scale away from zero)


@dataclass
class PlantedImageEncoder:
    """A planted image tower and the facts a test may assert (layers, heads 0-indexed)."""

    model: HookedImageEncoder  # noqa: F821 - imported lazily below
    head_layer: int
    head: int  # the one head that writes: the class token reads the reddest patch into OUT_DIM
    idle_head: int  # a head at head_layer with values but W_O = 0: exactly no effect
    out_direction: torch.Tensor  # [d_embed]: the embedding direction the planted head writes


@torch.no_grad()
def build_planted_image_encoder(
    n_layers: int = 3,
    head_layer: int = 1,
    n_heads: int = 2,
    head: int = 0,
    d_model: int = 16,
    image_size: int = 32,
    patch_size: int = 8,
    attention_gain: float = 40.0,
    seed: int = 0,
) -> PlantedImageEncoder:
    """A tiny ViT in which exactly one head writes, along a known direction.

    The patch embedding puts each patch's redness (red minus green and blue) in ``RED_DIM``; the
    class token carries ``CLS_DIM``; the other dimensions hold random content. At ``head_layer``,
    head ``head`` has a constant query and keys that read ``RED_DIM``, so every query (the class
    token among them) attends to the reddest patch; its value reads ``RED_DIM`` and ``W_O`` writes
    it to ``OUT_DIM``. Every other head and MLP has zero output weights, so it provably does
    nothing, and the projection is the identity. Hence, for an image with one red square on grey,
    the embedding's ``OUT_DIM`` says "red square here", only the planted head carries it, and only
    the square's patch (before ``head_layer``) or the class token (after) restores it.
    """
    from interp.models.image_config import ImageEncoderConfig
    from interp.models.image_encoder import HookedImageEncoder

    if not 0 <= head_layer < n_layers or not 0 <= head < n_heads or n_heads < 2:
        raise ValueError(f"need n_heads >= 2, head_layer in 0..{n_layers - 1}, head in 0..{n_heads - 1}")
    cfg = ImageEncoderConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=2 * d_model,
        image_size=(image_size, image_size), patch_size=(patch_size, patch_size), d_embed=d_model,
        act_fn="gelu", model_name="planted-red-square", pretrained=f"hand-built (seed {seed})",
    )
    model = HookedImageEncoder(cfg)
    for param in model.parameters():
        param.zero_()
    generator = torch.Generator().manual_seed(seed)
    content = slice(CLS_DIM + 1, d_model)
    n_content = d_model - CLS_DIM - 1
    area = patch_size * patch_size
    model.embed.W_patch[RED_DIM, 0] = 4.0 / area
    model.embed.W_patch[RED_DIM, 1:] = -2.0 / area
    model.embed.W_patch[content] = torch.randn(n_content, 3, patch_size, patch_size, generator=generator) / area
    model.embed.class_embedding[CLS_DIM] = 3.0
    model.embed.W_pos[:, content] = 0.5 * torch.randn(cfg.n_pos, n_content, generator=generator)
    for layer_norm in [model.ln_pre, model.ln_post, *(b.ln1 for b in model.blocks), *(b.ln2 for b in model.blocks)]:
        layer_norm.w.fill_(1.0)
    attn = model.blocks[head_layer].attn
    attn.b_Q[head, 0] = attention_gain
    attn.W_K[head, RED_DIM, 0] = 1.0
    attn.W_V[head, RED_DIM, 0] = 1.0
    attn.W_O[head, 0, OUT_DIM] = 4.0
    idle_head = (head + 1) % n_heads
    attn.W_V[idle_head] = torch.randn(d_model, cfg.d_head, generator=generator)
    model.W_proj.copy_(torch.eye(d_model))
    out_direction = torch.zeros(d_model)
    out_direction[OUT_DIM] = 1.0
    return PlantedImageEncoder(model.eval(), head_layer, head, idle_head, out_direction)
