"""TransformerLens idioms, written as a TransformerLens user types them, on the tiny and the
ViT-B-32 (random init) text encoders: tokens, caches, shorthands, residual decompositions, weight
views and TransformerLens's own activation-patching helpers.

Tolerances: fp32 throughout. A decomposition sums up to a few thousand components of size ~1, so
it is compared at 1e-5 absolute after LayerNorm (unit scale) and 1e-5 relative to the residual's
largest entry before it (the raw residual's scale depends on the init).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import patching
from transformer_lens.utilities import get_act_name

PAIR = ["No dog.", "A dog."]  # 5 tokens: the TL sweeps run one forward per cell
TEXTS = ["There are no animals.", "A photo of a cat.", "There is a dog on the red table."]
ATOL = 1e-5


@pytest.fixture(scope="module", params=["tiny", "ViT-B-32"])
def model(request):
    from interp import load_text_encoder

    name = request.param
    encoder = load_text_encoder(name, None) if name != "tiny" else load_text_encoder("tiny")
    encoder.eval()
    return encoder


@pytest.fixture(scope="module")
def cached(model):
    tokens = model.to_tokens(TEXTS)
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            out, cache = model.run_with_cache(tokens)
    finally:
        model.set_use_attn_result(False)
    return tokens, out, cache


def _normalized(resid: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without its affine part, computed independently of the encoder's modules."""
    return F.layer_norm(resid, resid.shape[-1:], eps=eps)


def _close(got: torch.Tensor, want: torch.Tensor, rel_to: torch.Tensor | None = None) -> None:
    scale = 1.0 if rel_to is None else float(rel_to.abs().max())
    err = float((got - want).detach().abs().max())
    assert err <= ATOL * max(scale, 1.0), f"max |diff| {err:.3g} over {ATOL} x {scale:.3g}"


# ----------------------------------------------------------------------------------- tokens
def test_to_tokens_is_a_batch_pos_int_tensor_the_model_accepts(model):
    tokens = model.to_tokens(TEXTS)
    assert isinstance(tokens, torch.Tensor) and tokens.dtype == torch.long and tokens.ndim == 2
    assert tokens.shape[0] == len(TEXTS)
    with torch.no_grad():
        from_tensor = model(tokens)
        from_batch = model(model.to_token_batch(TEXTS))
        from_texts = model(TEXTS)
    # Same ids, same mask and pooled position recovered from the plain tensor: identical outputs.
    assert torch.equal(from_tensor, from_batch) and torch.equal(from_tensor, from_texts)
    # Each row alone (no padding) gives the same embedding as inside the padded batch.
    with torch.no_grad():
        alone = torch.cat([model(model.to_tokens(t)) for t in TEXTS])
    _close(alone, from_tensor, rel_to=from_tensor)


def test_str_tokens_and_string_work_on_one_text_or_a_list(model):
    one = model.to_str_tokens(PAIR[0])
    many = model.to_str_tokens(PAIR)
    assert isinstance(one, list) and isinstance(one[0], str)
    assert many[0] == one and len(many) == 2
    tokens = model.to_tokens(PAIR)
    assert model.to_str_tokens(tokens[0]) == one
    assert model.to_string(tokens) == [t.lower() for t in model.to_string(tokens)]
    assert [s.replace(" ", "") for s in model.to_string(tokens)] == [t.lower().replace(" ", "") for t in PAIR]
    assert model.to_string(tokens[1]).replace(" ", "") == PAIR[1].lower().replace(" ", "")


# ----------------------------------------------------------------------------------- caches
def test_run_with_cache_with_names_filter_and_shorthands(model, cached):
    tokens, out, full = cached
    with torch.no_grad():
        out2, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(("hook_embed", "resid_pre")))
    _close(out2, out, rel_to=out)  # the cached run summed per-head results (use_attn_result): rounding only
    assert set(cache.keys()) == {"hook_embed"} | {f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)}
    assert torch.equal(cache["embed"], full["hook_embed"])
    assert torch.equal(full["pos_embed"], full["hook_pos_embed"])
    assert torch.equal(cache["resid_pre", 1], cache["blocks.1.hook_resid_pre"])
    assert torch.equal(cache["resid_pre", -1], cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_pre"])
    assert torch.equal(full["pattern", 0], full["blocks.0.attn.hook_pattern"])
    assert torch.equal(full["scale"], full["ln_final.hook_scale"])
    assert torch.equal(full["q", 0, "attn"], full["blocks.0.attn.hook_q"])
    # The embedding hooks are what layer 0 starts from.
    torch.testing.assert_close(full["embed"] + full["pos_embed"], full["resid_pre", 0], rtol=0, atol=0)


def test_get_act_name_names_exist_on_the_model(model):
    n = model.cfg.n_layers
    names = [get_act_name("embed"), get_act_name("pos_embed"), get_act_name("scale"), get_act_name("normalized")]
    for layer in (0, n - 1):
        names += [get_act_name(short, layer) for short in (
            "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "z",
            "attn_scores", "pattern", "result", "pre", "post")]
        names += [get_act_name("scale", layer, "ln1"), get_act_name("normalized", layer, "ln2")]
    names += [get_act_name("k6" if n > 6 else f"k{n - 1}"), get_act_name(f"scale{n - 1}ln1")]
    missing = [name for name in names if name not in model.hook_dict]
    assert not missing, missing


# ----------------------------------------------------------------------------------- decompositions
def test_decompose_resid_sums_to_the_residual_embeddings_included(model, cached):
    _, _, cache = cached
    eps = model.cfg.eps
    for layer in range(model.cfg.n_layers + 1):
        parts, labels = cache.decompose_resid(layer, return_labels=True)
        assert labels[:2] == ["embed", "pos_embed"]
        resid = cache.accumulated_resid(layer)[-1]
        _close(parts.sum(0), resid, rel_to=resid)
        normed = cache.decompose_resid(layer, apply_ln=True).sum(0)
        _close(normed, _normalized(resid, eps))
    mid = cache.decompose_resid(1, mlp_input=True).sum(0)
    _close(mid, cache["resid_mid", 1], rel_to=mid)


def test_accumulated_resid_with_ln_is_each_state_through_its_layernorm(model, cached):
    _, _, cache = cached
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    assert labels[-1] == "final_post" and len(labels) == model.cfg.n_layers + 1
    w, b = model.ln_final.w, model.ln_final.b
    for i in range(model.cfg.n_layers + 1):
        state = cache["resid_pre", i] if i < model.cfg.n_layers else cache["resid_post", -1]
        _close(stack[i], _normalized(state, model.cfg.eps) * w + b)
    _close(stack[-1], cache["ln_final.hook_normalized"])
    # Below the final layer: states scaled by that layer's cached ln1 scale.
    one = cache.accumulated_resid(1, apply_ln=True)
    _close(one[-1], _normalized(cache["resid_pre", 1], model.cfg.eps))


def test_stack_head_results_sum_to_attention_outputs_and_the_residual(model, cached):
    _, _, cache = cached
    n, h = model.cfg.n_layers, model.cfg.n_heads
    heads, labels = cache.stack_head_results(return_labels=True)
    assert heads.shape[0] == n * h and labels[h] == "L1H0"
    for layer in range(n):
        attn = heads[layer * h:(layer + 1) * h].sum(0) + model.blocks[layer].attn.b_O
        _close(attn, cache["attn_out", layer], rel_to=attn)
    with_rest = cache.stack_head_results(incl_remainder=True, apply_ln=True)
    _close(with_rest.sum(0), _normalized(cache["resid_post", -1], model.cfg.eps))


def test_full_resid_decomposition_sums_to_the_residual(model, cached):
    _, _, cache = cached
    last = -1  # one position keeps the neuron stack small on ViT-B-32 (12 x 2048 neurons)
    for layer in (1, model.cfg.n_layers):
        parts, labels = cache.get_full_resid_decomposition(layer, pos_slice=last, return_labels=True)
        assert {"embed", "pos_embed", "bias"} <= set(labels) and "L0H0" in labels and "L0N0" in labels
        resid = cache.accumulated_resid(layer)[-1][:, last]
        _close(parts.sum(0), resid, rel_to=resid)
        normed = cache.get_full_resid_decomposition(layer, pos_slice=last, apply_ln=True).sum(0)
        _close(normed, _normalized(resid, model.cfg.eps))
    coarse = cache.get_full_resid_decomposition(expand_neurons=False).sum(0)
    _close(coarse, cache["resid_post", -1], rel_to=coarse)


# ----------------------------------------------------------------------------------- weights
def test_stacked_weight_views_have_transformer_lens_shapes_and_values(model):
    n, h, d, e = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_head
    assert model.W_Q.shape == model.W_K.shape == model.W_V.shape == (n, h, d, e)
    assert model.W_O.shape == (n, h, e, d)
    assert model.OV.shape == model.QK.shape == (n, h, d, d)
    layer, head = n - 1, 1
    attn = model.blocks[layer].attn
    assert torch.equal(model.W_V[layer, head], attn.W_V[head])
    ov = (attn.W_V[head].double() @ attn.W_O[head].double()).float()
    qk = (attn.W_Q[head].double() @ attn.W_K[head].double().T).float()
    _close(model.OV[layer, head].AB, ov, rel_to=ov)
    _close(model.QK[layer, head].AB, qk, rel_to=qk)


# ----------------------------------------------------------------------------------- patching
def _manual_patch(model, base, name, clean, index):
    def hook(x, hook):
        x = x.clone()
        x[index] = clean[index]
        return x

    return model.run_with_hooks(base, fwd_hooks=[(name, hook)])


def test_transformer_lens_patching_agrees_with_manual_patching(model):
    """``get_act_patch_resid_pre`` / ``get_act_patch_attn_head_out_by_pos`` on every cell of tiny; on
    ViT-B-32 (their 12 x 5 x 8 one-forward-per-cell runs would dominate the suite) the same TL
    machinery, ``generic_activation_patch`` with the helpers' patch setters, on chosen cells."""
    import pandas as pd

    tokens = model.to_tokens(PAIR)
    clean, corrupt = tokens[:1], tokens[1:]
    torch.manual_seed(0)
    direction = torch.randn(model.cfg.d_embed)
    n_layers, n_heads, n_pos = model.cfg.n_layers, model.cfg.n_heads, tokens.shape[1]

    def metric(out):
        return out[0] @ direction

    cells = [(0, 0), (0, n_pos - 1), (n_layers - 1, 3), (1, 1), (1, 4)]
    head_cells = [(layer, pos, head) for layer, pos in cells for head in (0, n_heads - 1)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        if n_layers <= 2:
            resid_grid = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric)
            head_grid = patching.get_act_patch_attn_head_out_by_pos(model, corrupt, clean_cache, metric)
            assert resid_grid.shape == (n_layers, n_pos) and head_grid.shape == (n_layers, n_pos, n_heads)
            resid = {cell: resid_grid[cell] for cell in cells}
            heads = {cell: head_grid[cell] for cell in head_cells}
        else:
            # What those helpers run, restricted to the chosen cells (they accept no index_df).
            flat = patching.generic_activation_patch(
                model, corrupt, clean_cache, metric, patch_setter=patching.layer_pos_patch_setter,
                activation_name="resid_pre", index_df=pd.DataFrame(cells, columns=["layer", "pos"]))
            resid = dict(zip(cells, flat))
            flat = patching.generic_activation_patch(
                model, corrupt, clean_cache, metric, patch_setter=patching.layer_pos_head_vector_patch_setter,
                activation_name="z", index_df=pd.DataFrame(head_cells, columns=["layer", "pos", "head_index"]))
            heads = dict(zip(head_cells, flat))
        for (layer, pos), value in resid.items():
            name = f"blocks.{layer}.hook_resid_pre"
            want = metric(_manual_patch(model, corrupt, name, clean_cache[name], (slice(None), pos)))
            _close(value, want, rel_to=want)
        for (layer, pos, head), value in heads.items():
            name = f"blocks.{layer}.attn.hook_z"
            want = metric(_manual_patch(model, corrupt, name, clean_cache[name], (slice(None), pos, head)))
            _close(value, want, rel_to=want)
        # Patching the state where the two texts differ matters; the unpatched run is the baseline.
        base_value = metric(model(corrupt))
        assert torch.isclose(resid[(0, 0)], base_value)  # SOT: the same state in both texts
        assert not torch.isclose(resid[(1, 1)], base_value)  # "no" vs "a"


# ----------------------------------------------------------------------------------- post-LN (BERT)
def test_bert_plain_tokens_use_the_pad_mask_and_decompositions_are_refused():
    """MiniLM (post-LN): ids from to_tokens carry the padding through the pad id; the residual
    decompositions do not apply and say why instead of returning sums that do not add up."""
    from interp import load_text_encoder
    from interp.models.lens import NotApplicableError

    minilm = load_text_encoder("all-MiniLM-L6-v2").eval()
    tokens = minilm.to_tokens(TEXTS)
    assert (tokens == minilm.tokenizer.pad_id).any(), "the batch must be padded"
    with torch.no_grad():
        assert torch.equal(minilm(tokens), minilm(minilm.to_token_batch(TEXTS)))
        _, cache = minilm.run_with_cache(tokens)
    assert torch.equal(cache["embed"], cache["hook_embed"])
    for call in (lambda: cache.decompose_resid(), lambda: cache.get_full_resid_decomposition(),
                 lambda: cache.accumulated_resid(apply_ln=True), lambda: cache.stack_head_results(apply_ln=True)):
        with pytest.raises(NotApplicableError, match="post-LN"):
            call()
    assert cache.accumulated_resid().shape[0] == minilm.cfg.n_layers + 1  # stacking states is fine
