"""Bad input gets one clear error naming the input and the fix; never a silent wrong result."""

from __future__ import annotations

import pytest
import torch

from interp import load_text_encoder
from interp.cli.common import run_cli
from interp.errors import CheckpointMismatchError, ClipInterpError, UnknownModelError, WeightsUnavailableError
from interp.models.loading import create_open_clip_model
from interp.models.tokenization import TokenizationError


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(UnknownModelError, match=r"unknown model 'ViT-B-33'.*ViT-B-32"):
        load_text_encoder("ViT-B-33", None)


def test_unknown_pretrained_tag_lists_the_tags():
    with pytest.raises(UnknownModelError, match=r"'no-such-tag'.*tags: openai"):
        load_text_encoder("ViT-B-32", "no-such-tag")


def test_weights_that_cannot_be_downloaded_say_how_to_pass_a_local_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        load_text_encoder("ViT-B-32-quickgelu", "openai")
    message = str(info.value)
    assert "'ViT-B-32-quickgelu'" in message and "could not be downloaded" in message
    assert "--pretrained /path/to/" in message


def test_default_weights_of_the_reference_model_are_openai(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="'openai'"):
        load_text_encoder()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_round_trip(tmp_path, suffix, sentences):
    source = create_open_clip_model("tiny", None, seed=7)
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    loaded = load_text_encoder("tiny", str(path))
    random = load_text_encoder("tiny", None, seed=0)
    with torch.no_grad():
        expected = source.encode_text(loaded.tokenizer(sentences, pad_to="context").tokens)
        assert (loaded(sentences) - expected).abs().max() <= 1e-5
        assert not torch.allclose(random(sentences), expected)


def test_checkpoint_of_another_architecture_names_the_wrong_tensor(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(create_open_clip_model("tiny", None).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"positional_embedding: checkpoint \(77, 64\) vs model \(77, 512\)"):
        load_text_encoder("ViT-B-32", str(path))


def test_over_long_text_is_named_with_its_length(tiny_model):
    text = "a dog " * 60
    with pytest.raises(TokenizationError, match=r"is 122 tokens long, over the model's context of 77"):
        tiny_model(text)
    with pytest.warns(UserWarning, match="truncated to 77"):
        batch = tiny_model.to_token_batch([text], truncate=True)
    assert batch.tokens.shape[1] == 77 and batch.tokens[0, -1] == 49407


@pytest.mark.parametrize("texts", ["", ["There is a dog.", "   "], []])
def test_empty_texts_are_refused(tiny_model, texts):
    with pytest.raises(TokenizationError, match="empty|no texts"):
        tiny_model(texts)


def test_cli_turns_expected_errors_into_one_line(capsys):
    def main(argv):
        raise UnknownModelError("unknown model 'x': pass a known one")

    assert run_cli(main, []) == 2
    assert capsys.readouterr().err.strip() == "error: unknown model 'x': pass a known one"


def test_cli_errors_are_clip_interp_errors():
    assert issubclass(TokenizationError, ClipInterpError) and issubclass(CheckpointMismatchError, ClipInterpError)
