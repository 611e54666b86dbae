"""open_clip towers whose tokenizer or mask the hooked encoder does not reproduce are refused.

Before: ``ViT-B-16-SigLIP2`` loaded and embedded CLIP BPE ids with a 256k-token vocabulary (a wrong
embedding, no error); ``ViT-B-16-SigLIP`` crashed with IndexError; ``MobileCLIP-S1`` (bidirectional
mask) differed from open_clip by ~3 on outputs of ~3.5; ``xlm-roberta-base-ViT-B-32`` raised
transformers' OSError offline. Each family is refused from its config, before any weights load.
"""

from __future__ import annotations

import pytest

from interp import load_text_encoder
from interp.models.towers import CLIP_BPE_VOCAB, UnsupportedTowerError

FAMILIES = [
    ("ViT-B-16-SigLIP", r"uses its own tokenizer \(timm/ViT-B-16-SigLIP, not CLIP's BPE\)"),
    ("ViT-B-16-SigLIP2", r"uses its own tokenizer \(timm/ViT-B-16-SigLIP2, not CLIP's BPE\)"),
    ("ViT-B-16-SigLIP-i18n-256", r"uses its own tokenizer"),
    ("xlm-roberta-base-ViT-B-32", r"Hugging Face text tower \(xlm-roberta-base"),
    ("roberta-ViT-B-32", r"Hugging Face text tower \(roberta-base"),
    ("nllb-clip-base", r"Hugging Face text tower|uses its own tokenizer"),
    ("MobileCLIP-S1", r"bidirectional text tower \(no_causal_mask"),
    ("MobileCLIP2-S0", r"bidirectional text tower"),
]


@pytest.mark.parametrize("name,pattern", FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.parametrize("pretrained", [None, "default"])
def test_unsupported_families_are_refused_before_loading(name, pattern, pretrained, open_clip_module, monkeypatch):
    monkeypatch.setattr(open_clip_module, "create_model", lambda *a, **k: pytest.fail("weights loaded before the check"))
    with pytest.raises(UnsupportedTowerError, match=pattern) as info:
        load_text_encoder(name, pretrained)
    assert "supported are open_clip models with CLIP's BPE tokenizer" in str(info.value)


def test_every_open_clip_name_is_refused_or_has_a_clip_bpe_causal_tower(open_clip_module):
    """The accepted set, from configs only: CLIP BPE vocabulary, no HF tokenizer, causal mask."""
    from interp.models.towers import check_open_clip_text_config

    accepted = []
    for name in open_clip_module.list_models():
        text = open_clip_module.get_model_config(name).get("text_cfg", {})
        try:
            check_open_clip_text_config(name, text)
        except UnsupportedTowerError:
            continue
        accepted.append(name)
        assert text.get("vocab_size", CLIP_BPE_VOCAB) == CLIP_BPE_VOCAB and not text.get("no_causal_mask")
        assert not text.get("hf_tokenizer_name") and not text.get("hf_model_name")
    assert {"ViT-B-32", "ViT-B-32-quickgelu", "ViT-L-14"} <= set(accepted)


def test_model_objects_with_another_vocabulary_or_no_causal_mask_are_refused(open_clip_module):
    oc = open_clip_module.model
    vision = oc.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=32, image_size=64)
    other_vocab = oc.CLIP(embed_dim=16, vision_cfg=vision,
                          text_cfg=oc.CLIPTextCfg(context_length=16, vocab_size=1000, width=32, heads=2, layers=1))
    with pytest.raises(UnsupportedTowerError, match="vocabulary has 1000 tokens"):
        load_text_encoder(other_vocab)
    bidirectional = oc.CLIP(embed_dim=16, vision_cfg=vision,
                            text_cfg=oc.CLIPTextCfg(context_length=16, vocab_size=CLIP_BPE_VOCAB, width=32, heads=2,
                                                    layers=1, no_causal_mask=True))
    with pytest.raises(UnsupportedTowerError, match="no causal mask"):
        load_text_encoder(bidirectional)
