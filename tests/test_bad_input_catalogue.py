"""A catalogue of bad inputs, one parametrised test per command.

Every case must end with exit code 2, exactly one line on stderr that names the input (flag, file or
value) and says what to do, no traceback, and nothing written into ``--out``. The cases run in
process (``<command>.cli(argv)``), so argparse's own errors count too: they must be one line as well.

Cases about the run-folder contract (a folder of the user's own files, a lock against a second
writer, ``--overwrite`` for sweeps) belong to the run machinery and are listed in the report of
issue 11 as "needs #12"; they are not here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses.cli import alignment as alignment_cli
from analyses.cli import extract as extract_cli
from interp.cli import ablate as ablate_cli
from interp.cli import data as data_cli
from interp.cli import trace as trace_cli
from probes.cli import ideal_words as ideal_words_cli
from probes.cli import linear as linear_cli

TINY = ["--model", "tiny", "--pretrained", "none"]
UNWRITABLE = "/proc/clip-interp-catalogue/out"  # nothing can be created under /proc, not even by root
USER_FILE_TEXT = "the user's own file\n"


# ------------------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Every bad (and a few good) input file the cases point at."""
    from safetensors.torch import save_file

    from interp.data.image_cache import save_precomputed_embeddings
    from interp.data.negation import load_existence_pairs
    from interp.models.loading import create_open_clip_model

    root = tmp_path_factory.mktemp("catalogue")
    f: dict[str, Path] = {}

    tiny = create_open_clip_model("tiny", None, seed=0).state_dict()
    f["text_st"] = root / "text.safetensors"
    f["text_st"].write_text("this is not a safetensors file\n")
    good = root / "good.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.items()}, str(good))
    f["trunc_st"] = root / "truncated.safetensors"
    f["trunc_st"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    nan = {k: v.clone() for k, v in tiny.items()}
    nan["transformer.resblocks.1.mlp.c_fc.weight"][0, 0] = float("nan")
    f["nan_pt"] = root / "nan.pt"
    torch.save(nan, f["nan_pt"])
    f["nan_st"] = root / "nan.safetensors"
    save_file({k: v.contiguous() for k, v in nan.items()}, str(f["nan_st"]))
    f["pickle_garbage"] = root / "garbage.pt"
    f["pickle_garbage"].write_bytes(b"\x80\x04garbage")

    f["bert_bad"] = root / "bert_bad"
    f["bert_bad"].mkdir()
    (f["bert_bad"] / "config.json").write_text('{"model_type": "bert", "hidden_size": ')
    f["bert_keys"] = root / "bert_keys"
    f["bert_keys"].mkdir()
    (f["bert_keys"] / "config.json").write_text('{"model_type": "bert"}')
    for name in ("model.safetensors", "vocab.txt"):
        (f["bert_keys"] / name).write_text("x")
    f["hf_config_only"] = root / "hf_config_only"
    f["hf_config_only"].mkdir()
    (f["hf_config_only"] / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip"}))
    f["config_list"] = root / "config_list"
    f["config_list"].mkdir()
    (f["config_list"] / "config.json").write_text("[1, 2]")

    images = sorted({p.image_file for p in load_existence_pairs().pairs})
    f["emb_zero"] = root / "zero.npz"
    save_precomputed_embeddings(f["emb_zero"], images, torch.zeros(len(images), 32))
    f["emb_width"] = root / "width.npz"
    save_precomputed_embeddings(f["emb_width"], images, torch.randn(len(images), 7))
    f["emb_nan"] = root / "nan_emb.npz"
    nan_rows = torch.randn(len(images), 32)
    nan_rows[3, 1] = float("nan")
    np.savez(f["emb_nan"], image_files=np.array(images), embeddings=nan_rows.numpy())
    f["emb_missing"] = root / "missing.npz"
    save_precomputed_embeddings(f["emb_missing"], images[:3], torch.randn(3, 32))

    rng = np.random.default_rng(0)
    f["x"] = root / "x.npz"
    np.savez(f["x"], embeddings=rng.normal(size=(40, 6)))
    f["y"] = root / "y.npz"
    np.savez(f["y"], embeddings=rng.normal(size=(40, 5)))
    f["y_short"] = root / "y_short.npz"
    np.savez(f["y_short"], embeddings=rng.normal(size=(30, 5)))
    f["constant"] = root / "constant.npz"
    np.savez(f["constant"], embeddings=np.ones((40, 5)))
    f["plain_npy"] = root / "plain.npy"
    np.save(f["plain_npy"], rng.normal(size=(40, 5)))
    f["object_npz"] = root / "object.npz"
    np.savez(f["object_npz"], embeddings=np.array([[1, "a"], [2, None]], dtype=object))
    f["bad_meta"] = root / "bad_meta.npz"
    np.savez(f["bad_meta"], embeddings=rng.normal(size=(40, 5)), meta=np.array("{not json"))
    f["nan_npz"] = root / "nan.npz"
    nan_x = rng.normal(size=(40, 5))
    nan_x[7, 2] = np.nan
    np.savez(f["nan_npz"], embeddings=nan_x)
    f["one_d"] = root / "one_d.npz"
    np.savez(f["one_d"], embeddings=rng.normal(size=40))
    f["no_embeddings"] = root / "no_embeddings.npz"
    np.savez(f["no_embeddings"], other=rng.normal(size=(40, 5)))
    f["not_npz"] = root / "not_npz.npz"
    f["not_npz"].write_text("plain text, not a zip archive\n")

    f["labels_empty"] = root / "labels_empty.csv"
    f["labels_empty"].write_text("")
    f["labels_header"] = root / "labels_header.csv"
    f["labels_header"].write_text("image,color,object\n")
    f["iw_emb"] = root / "iw_emb.npy"
    np.save(f["iw_emb"], rng.normal(size=(4, 32)))
    f["iw_emb_zero"] = root / "iw_emb_zero.npy"
    np.save(f["iw_emb_zero"], np.zeros((4, 32)))

    f["images"] = root / "images"
    f["images"].mkdir()
    f["captions_empty"] = root / "captions_empty.csv"
    f["captions_empty"].write_text("")
    f["captions_latin1"] = root / "captions_latin1.csv"
    f["captions_latin1"].write_bytes("image,caption\n" .encode() + "".join(
        f"a{i}.png,un caf\u00e9 cr\u00e8me {i}\n" for i in range(5)).encode("latin-1"))
    f["captions_no_header"] = root / "captions_no_header.csv"
    f["captions_no_header"].write_text("a.png,a dog\nb.png,a cat\n")
    f["captions_blank"] = root / "captions_blank.csv"
    f["captions_blank"].write_text("image,caption\na.png,\nb.png,a cat\nc.png,x\nd.png,y\n")
    f["captions_few"] = root / "captions_few.csv"
    f["captions_few"].write_text("image,caption\na.png,a dog\n")
    f["captions_missing_image"] = root / "captions_missing_image.csv"
    f["captions_missing_image"].write_text("image,caption\n" + "".join(f"no_such_image.png,a dog {i}\n" for i in range(4)))

    pieces = json.loads((Path(__file__).parents[1] / "datasets/valse/existence.json").read_text())
    f["valse_novalid"] = root / "valse_novalid"
    f["valse_novalid"].mkdir()
    novalid = {k: {**v, "mturk": {"caption": 0, "foil": 3, "other": 0}} for k, v in list(pieces.items())[:6]}
    (f["valse_novalid"] / "existence.json").write_text(json.dumps(novalid))
    f["valse_broken"] = root / "valse_broken"
    f["valse_broken"].mkdir()
    (f["valse_broken"] / "existence.json").write_text("{broken")
    f["valse_empty_dir"] = root / "valse_empty_dir"
    f["valse_empty_dir"].mkdir()

    f["a_file"] = root / "a_file.txt"
    f["a_file"].write_text(USER_FILE_TEXT)
    return {k: str(v) for k, v in f.items()}


def _argv(template: list[str], files: dict[str, str], out: str) -> list[str]:
    return [a.format(out=out, **files) for a in template]


def assert_refused(cli, argv: list[str], pattern: str, out: Path, capsys) -> None:
    """Exit 2, one 'error:' line matching ``pattern``, no traceback, nothing in ``out``."""
    code = cli(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{err}"
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    if out.is_dir():
        assert not any(out.iterdir()), f"{out} holds {sorted(p.name for p in out.iterdir())}"
    elif out.is_file():
        assert out.read_text() == USER_FILE_TEXT


def _run_case(cli, template, pattern, files, tmp_path, capsys, out=None):
    out = out or str(tmp_path / "out")
    argv = _argv(template, files, out)
    out_path = Path(argv[argv.index("--out") + 1]) if "--out" in argv else tmp_path / "out"
    assert_refused(cli, argv, pattern, out_path, capsys)


# Model arguments every model-loading command shares: (id, extra argv replacing TINY, message pattern).
MODEL_CASES = [
    ("device-gpu", [*TINY, "--device", "gpu"], r"--device gpu.*use cpu"),
    ("device-cuda-absent", [*TINY, "--device", "cuda"], r"--device cuda.*no CUDA device.*use cpu"),
    ("dtype-unknown", [*TINY, "--dtype", "float8"], r"--dtype.*invalid choice.*float8"),
    ("model-unknown", ["--model", "ViT-B-33", "--pretrained", "none"], r"unknown model 'ViT-B-33'.*ViT-B-32"),
    ("pretrained-bad-tag", ["--model", "ViT-B-32", "--pretrained", "no-such-tag"], r"'no-such-tag'.*tags"),
    ("safetensors-text", ["--model", "tiny", "--pretrained", "{text_st}"], r"text\.safetensors.*not a safetensors file"),
    ("safetensors-truncated", ["--model", "tiny", "--pretrained", "{trunc_st}"], r"truncated\.safetensors.*truncated"),
    ("checkpoint-nan-pt", ["--model", "tiny", "--pretrained", "{nan_pt}"], r"nan\.pt.*c_fc\.weight.*NaN"),
    ("checkpoint-nan-safetensors", ["--model", "tiny", "--pretrained", "{nan_st}"], r"nan\.safetensors.*NaN"),
    ("checkpoint-garbage", ["--model", "tiny", "--pretrained", "{pickle_garbage}"], r"cannot read checkpoint .*garbage\.pt"),
    ("bert-config-malformed", ["--model", "{bert_bad}", "--pretrained", "none"], r"bert_bad/config\.json is not valid JSON"),
    ("bert-config-missing-keys", ["--model", "{bert_keys}", "--pretrained", "none"], r"bert_keys/config\.json.*num_hidden_layers"),
    ("config-json-list", ["--model", "{config_list}", "--pretrained", "none"], r"config_list/config\.json holds a JSON list"),
    ("hf-dir-config-only", ["--model", "{hf_config_only}", "--pretrained", "none"], r"hf_config_only does not load.*model\.safetensors"),
]


# ------------------------------------------------------------------------------------------- trace
TRACE = ["--task", "existence", "--no-progress", "--no-figures", "--out", "{out}"]
TRACE_CASES = [
    *[(f"model-{i}", [*TRACE, "--target", "text", *argv], p) for i, argv, p in MODEL_CASES],
    ("threads-negative", [*TRACE, *TINY, "--target", "text", "--threads", "-1"], r"--threads -1 must be at least 1"),
    ("threads-zero", [*TRACE, *TINY, "--target", "text", "--threads", "0"], r"--threads 0 must be at least 1"),
    ("budget-zero", [*TRACE, *TINY, "--target", "text", "--budget-mb", "0"], r"--budget-mb 0.0 must be a positive"),
    ("budget-negative", [*TRACE, *TINY, "--target", "text", "--budget-mb", "-5"], r"--budget-mb -5.0 must be a positive"),
    ("budget-nan", [*TRACE, *TINY, "--target", "text", "--budget-mb", "nan"], r"--budget-mb nan must be a positive"),
    ("limit-negative", [*TRACE, *TINY, "--target", "text", "--limit", "-5"], r"--limit -5 must be at least 1"),
    ("limit-zero", [*TRACE, *TINY, "--target", "text", "--limit", "0"], r"--limit 0 must be at least 1"),
    ("limit-not-int", [*TRACE, *TINY, "--target", "text", "--limit", "abc"], r"--limit.*invalid int value: 'abc'"),
    ("chunk-items-zero", [*TRACE, *TINY, "--target", "text", "--batch-size", "0"], r"--batch-size 0 must be at least 1"),
    ("window-zero", [*TRACE, *TINY, "--target", "text", "--window", "0"], r"--window 0 must be at least 1"),
    ("noise-scale-negative", [*TRACE, *TINY, "--target", "text", "--mode", "noise", "--noise-scale", "-1"], r"--noise-scale -1.0"),
    ("noise-samples-zero", [*TRACE, *TINY, "--target", "text", "--mode", "noise", "--samples", "0"], r"--samples 0 must be at least 1"),
    ("noise-roles-bogus", [*TRACE, *TINY, "--target", "text", "--mode", "noise", "--noise-roles", "bogus"], r"--noise-roles 'bogus'"),
    ("no-target", [*TRACE, *TINY], r"no target: pass --images DIR"),
    ("images-missing", [*TRACE, *TINY, "--images", "/no/such/dir"], r"--images /no/such/dir is not a folder"),
    ("embeddings-missing", [*TRACE, *TINY, "--image-embeddings", "/no/such.npz"], r"--image-embeddings /no/such\.npz does not exist"),
    ("embeddings-zero-rows", [*TRACE, *TINY, "--image-embeddings", "{emb_zero}"], r"zero\.npz.*rows are all zeros"),
    ("embeddings-width", [*TRACE, *TINY, "--image-embeddings", "{emb_width}"], r"size 7 but tiny's text embeddings have 32"),
    ("embeddings-nan", [*TRACE, *TINY, "--image-embeddings", "{emb_nan}"], r"nan_emb\.npz holds NaN"),
    ("embeddings-missing-images", [*TRACE, *TINY, "--image-embeddings", "{emb_missing}"], r"missing\.npz lacks"),
    ("segment-without-images", [*TRACE, *TINY, "--target", "text", "--segment", "correct"], r"--segment correct needs images"),
    ("kind-unknown", [*TRACE, *TINY, "--target", "text", "--kind", "bogus"], r"--kind.*invalid choice: 'bogus'"),
    ("unknown-flag", [*TRACE, *TINY, "--target", "text", "--bogus"], r"unrecognized arguments: --bogus"),
    ("valse-no-valid-item", [*TRACE, *TINY, "--target", "text", "--valse-dir", "{valse_novalid}"], r"no valid minimal pair.*--valse-dir"),
    ("valse-broken-json", [*TRACE, *TINY, "--target", "text", "--valse-dir", "{valse_broken}"], r"existence\.json"),
    ("valse-dir-empty", [*TRACE, *TINY, "--target", "text", "--valse-dir", "{valse_empty_dir}"], r"valse_empty_dir"),
    ("out-is-file", [*TRACE[:-1], "{a_file}", *TINY, "--target", "text"], r"--out .*a_file\.txt is a file"),
    ("out-unwritable", [*TRACE[:-1], UNWRITABLE, *TINY, "--target", "text"], r"--out /proc/clip-interp-catalogue/out is not writable"),
    ("minilm-with-images", [*TRACE, "--model", "all-MiniLM-L6-v2", "--pretrained", "none", "--image-embeddings", "{emb_zero}"],
     r"not a CLIP text tower.*--target text"),
]


@pytest.mark.parametrize("template,pattern", [c[1:] for c in TRACE_CASES], ids=[c[0] for c in TRACE_CASES])
def test_trace_bad_input(template, pattern, files, tmp_path, capsys):
    _run_case(trace_cli.cli, template, pattern, files, tmp_path, capsys)


# ------------------------------------------------------------------------------------------- ablate
ABLATE = ["--out", "{out}"]
ABLATE_CASES = [
    *[(f"model-{i}", [*ABLATE, "--target", "text", *argv], p) for i, argv, p in MODEL_CASES],
    ("layers-duplicate", [*ABLATE, *TINY, "--target", "text", "--layers", "1,1"], r"--layers '1,1' lists \[1\] more than once"),
    ("layers-not-int", [*ABLATE, *TINY, "--target", "text", "--layers", "a,b"], r"--layers 'a,b' must be a comma list of integers"),
    ("layers-out-of-range", [*ABLATE, *TINY, "--target", "text", "--layers", "5"], r"layer 5 .* out of range: valid layers are 0\.\.1"),
    ("layers-empty", [*ABLATE, *TINY, "--target", "text", "--layers", ","], r"--layers ',' names no layers"),
    ("components-bogus", [*ABLATE, *TINY, "--target", "text", "--components", "heads"], r"--components 'heads'"),
    ("components-duplicate", [*ABLATE, *TINY, "--target", "text", "--components", "mlp,mlp"], r"--components 'mlp,mlp'"),
    ("method-bogus", [*ABLATE, *TINY, "--target", "text", "--method", "scramble"], r"--method 'scramble' does not exist"),
    ("chunk-zero", [*ABLATE, *TINY, "--target", "text", "--batch-size", "0"], r"--batch-size 0 must be at least 1"),
    ("chunk-negative", [*ABLATE, *TINY, "--target", "text", "--batch-size", "-1"], r"--batch-size -1 must be at least 1"),
    ("limit-negative", [*ABLATE, *TINY, "--target", "text", "--limit", "-5"], r"--limit -5 must be at least 1"),
    ("no-target", [*ABLATE, *TINY], r"no target: pass --images DIR"),
    ("images-missing", [*ABLATE, *TINY, "--images", "/no/such/dir"], r"--images /no/such/dir is not a folder"),
    ("embeddings-missing", [*ABLATE, *TINY, "--image-embeddings", "/no/such.npz"], r"--image-embeddings /no/such\.npz does not exist"),
    ("embeddings-zero-rows", [*ABLATE, *TINY, "--image-embeddings", "{emb_zero}"], r"zero\.npz.*rows are all zeros"),
    ("embeddings-width", [*ABLATE, *TINY, "--image-embeddings", "{emb_width}"], r"width\.npz has rows of size 7 but tiny's text embeddings have 32"),
    ("embeddings-nan", [*ABLATE, *TINY, "--image-embeddings", "{emb_nan}"], r"nan_emb\.npz holds NaN"),
    ("segment-text-target", [*ABLATE, *TINY, "--target", "text", "--segment", "correct"], r"--segment correct needs images"),
    ("site-bogus", [*ABLATE, *TINY, "--target", "text", "--site", "q"], r"--site.*invalid choice: 'q'"),
    ("out-is-file", ["--out", "{a_file}", *TINY, "--target", "text"], r"--out .*a_file\.txt is a file"),
    ("out-unwritable", ["--out", UNWRITABLE, *TINY, "--target", "text"], r"--out /proc/clip-interp-catalogue/out is not writable"),
]


@pytest.mark.parametrize("template,pattern", [c[1:] for c in ABLATE_CASES], ids=[c[0] for c in ABLATE_CASES])
def test_ablate_bad_input(template, pattern, files, tmp_path, capsys):
    _run_case(ablate_cli.cli, template, pattern, files, tmp_path, capsys)


# ------------------------------------------------------------------------------------------- data
DATA = ["--out", "{out}"]
DATA_CASES = [
    ("device-gpu", [*DATA, *TINY, "--device", "gpu"], r"--device gpu"),
    ("model-unknown", [*DATA, "--model", "ViT-B-33", "--pretrained", "none"], r"unknown model 'ViT-B-33'"),
    ("bert-config-malformed", [*DATA, "--model", "{bert_bad}", "--pretrained", "none"], r"bert_bad/config\.json is not valid JSON"),
    ("hf-dir-config-only", [*DATA, "--model", "{hf_config_only}", "--pretrained", "none"], r"hf_config_only does not load"),
    ("data-dir-missing", [*DATA, *TINY, "--valse-dir", "/no/such/valse"], r"/no/such/valse"),
    ("data-dir-broken-json", [*DATA, *TINY, "--valse-dir", "{valse_broken}"], r"existence\.json"),
    ("out-missing", [*TINY], r"--out"),
    ("out-is-file", ["--out", "{a_file}", *TINY], r"--out .*a_file\.txt is a file"),
    ("out-under-file", ["--out", "{a_file}/sub", *TINY], r"a_file\.txt is a file, so no folder can be made under it"),
    ("out-unwritable", ["--out", UNWRITABLE, *TINY], r"--out /proc/clip-interp-catalogue/out is not writable"),
]


@pytest.mark.parametrize("template,pattern", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_data_bad_input(template, pattern, files, tmp_path, capsys):
    _run_case(data_cli.cli, template, pattern, files, tmp_path, capsys)


# ------------------------------------------------------------------------------------------- probes.linear
LINEAR = ["--task", "existence", "--out", "{out}", *TINY]
LINEAR_CASES = [
    ("limit-negative", [*LINEAR, "--limit", "-5"], r"--limit -5 must be at least 4"),
    ("limit-too-small", [*LINEAR, "--limit", "2"], r"--limit 2 must be at least 4"),
    ("causal-layer-abc", [*LINEAR, "--causal-layer", "abc"], r"--causal-layer 'abc' is not 'best' or a layer number"),
    ("C-negative", [*LINEAR, "--C", "-1"], r"--C -1.0 must be a positive number"),
    ("C-zero", [*LINEAR, "--C", "0"], r"--C 0.0 must be a positive number"),
    ("roles-bogus", [*LINEAR, "--roles", "bogus"], r"--roles 'bogus': choose distinct roles"),
    ("roles-empty", [*LINEAR, "--roles", ","], r"--roles ','"),
    ("causal-role-not-probed", [*LINEAR, "--roles", "negator", "--causal-role", "pooled"], r"--causal-role 'pooled' is not among --roles"),
    ("batch-size-zero", [*LINEAR, "--batch-size", "0"], r"--batch-size 0 must be at least 1"),
    ("folds-one", [*LINEAR, "--folds", "1"], r"--folds 1 must be at least 2"),
    ("controls-zero", [*LINEAR, "--controls", "0"], r"--controls 0 must be at least 1"),
    ("control-type-pooled", [*LINEAR, "--control", "type"], r"--control type needs token positions.*pooled"),
    ("control-type-one-token-type", [*LINEAR, "--roles", "period,first_subject", "--causal-role", "first_subject",
                                     "--control", "type"], r"--control type: role 'period' has 1 token type"),
    ("layers-syntax", [*LINEAR, "--layers", "one"], r"--layers 'one' is not 'all'"),
    ("layers-out-of-range", [*LINEAR, "--layers", "0,9"], r"--layers \[9\] outside 0\.\.2"),
    ("images-missing", [*LINEAR, "--images", "/no/such/dir"], r"--images /no/such/dir is not a folder"),
    ("data-dir-no-valid-item", [*LINEAR, "--valse-dir", "{valse_novalid}"], r"no valid minimal pair.*--valse-dir"),
    ("device-gpu", [*LINEAR, "--device", "gpu"], r"--device gpu"),
    ("checkpoint-nan", ["--task", "existence", "--out", "{out}", "--model", "tiny", "--pretrained", "{nan_pt}"], r"nan\.pt.*NaN"),
    ("out-unwritable", ["--task", "existence", "--out", UNWRITABLE, *TINY], r"is not writable"),
    ("out-under-file", ["--task", "existence", "--out", "{a_file}/sub", *TINY], r"a_file\.txt is a file"),
    ("task-missing", ["--out", "{out}", *TINY], r"--task"),
]


@pytest.mark.parametrize("template,pattern", [c[1:] for c in LINEAR_CASES], ids=[c[0] for c in LINEAR_CASES])
def test_probes_linear_bad_input(template, pattern, files, tmp_path, capsys):
    _run_case(linear_cli.cli, template, pattern, files, tmp_path, capsys)


# ------------------------------------------------------------------------------------------- probes.ideal_words
IW = ["--out", "{out}", *TINY, "--concepts", "colours_objects", "--idioms", "none", "--no-layers"]
IW_CASES = [
    ("image-embeddings-not-npz", [*IW, "--image-embeddings", "{not_npz}", "--labels", "{labels_header}"], r"not_npz\.npz cannot be read"),
    ("image-embeddings-missing", [*IW, "--image-embeddings", "/no/such.npy", "--labels", "{labels_header}"], r"--image-embeddings /no/such\.npy does not exist"),
    ("image-embeddings-zero", [*IW, "--image-embeddings", "{iw_emb_zero}", "--labels", "{labels_header}"], r"iw_emb_zero\.npy have all-zero rows"),
    ("image-embeddings-object", [*IW, "--image-embeddings", "{object_npz}", "--labels", "{labels_header}"], r"object\.npz"),
    ("labels-empty", [*IW, "--image-embeddings", "{iw_emb}", "--labels", "{labels_empty}"], r"labels_empty\.csv is empty or not a CSV"),
    ("labels-header-only", [*IW, "--image-embeddings", "{iw_emb}", "--labels", "{labels_header}"], r"labels_header\.csv has a header but no rows"),
    ("labels-without-images", [*IW, "--labels", "{labels_header}"], r"--labels given without --image-embeddings"),
    ("images-without-labels", [*IW, "--image-embeddings", "{iw_emb}"], r"image inputs need --labels"),
    ("batch-size-zero", [*IW, "--batch-size", "0"], r"--batch-size 0 must be at least 1"),
    ("concepts-unknown", [*IW, "--concepts", "no_such_set"], r"no_such_set"),
    ("alpha-malformed", [*IW, "--alpha", "nonsense"], r"--alpha|nonsense"),
    ("device-gpu", [*IW, "--device", "gpu"], r"--device gpu"),
    ("out-unwritable", ["--out", UNWRITABLE, *TINY], r"is not writable"),
    ("out-is-file", ["--out", "{a_file}", *TINY], r"--out .*a_file\.txt is a file"),
]


@pytest.mark.parametrize("template,pattern", [c[1:] for c in IW_CASES], ids=[c[0] for c in IW_CASES])
def test_probes_ideal_words_bad_input(template, pattern, files, tmp_path, capsys):
    _run_case(ideal_words_cli.cli, template, pattern, files, tmp_path, capsys)


# ------------------------------------------------------------------------------------------- analyses.alignment
AL = ["--out", "{out}", "--sections", "cka", "--permutations", "5"]
ALIGN_CASES = [
    ("constant-x", [*AL, "--x", "{constant}", "--y", "{y}"], r"CKA is undefined: every row of X is the same"),
    ("constant-y", [*AL, "--x", "{x}", "--y", "{constant}"], r"CKA is undefined: every row of Y is the same"),
    ("plain-npy", [*AL, "--x", "{plain_npy}", "--y", "{y}"], r"--x: .*plain\.npy is a plain \.npy array"),
    ("object-array", [*AL, "--x", "{object_npz}", "--y", "{y}"], r"--x: .*object\.npz holds an array that cannot be read without pickle"),
    ("meta-not-json", [*AL, "--x", "{bad_meta}", "--y", "{y}"], r"--x: .*bad_meta\.npz has a 'meta' that is not JSON"),
    ("nan-rows", [*AL, "--x", "{nan_npz}", "--y", "{y}"], r"NaN or inf in 1 row"),
    ("one-d", [*AL, "--x", "{one_d}", "--y", "{y}"], r"must be 2-D"),
    ("no-embeddings-array", [*AL, "--x", "{no_embeddings}", "--y", "{y}"], r"no 'embeddings'"),
    ("not-npz", [*AL, "--x", "{not_npz}", "--y", "{y}"], r"not_npz\.npz is not a readable \.npz"),
    ("missing-file", [*AL, "--x", "/no/such.npz", "--y", "{y}"], r"--x: no such file"),
    ("rows-differ", [*AL, "--x", "{x}", "--y", "{y_short}"], r"--x has 40 rows but --y has 30"),
    ("no-inputs", [*AL], r"pass --x A\.npz and --y B\.npz"),
    ("permutations-zero", [*AL, "--x", "{x}", "--y", "{y}", "--permutations", "0"], r"--permutations 0 must be at least 1"),
    ("folds-one", [*AL, "--x", "{x}", "--y", "{y}", "--folds", "1"], r"--folds 1 must be at least 2"),
    ("n-base-negative", [*AL, "--x", "{x}", "--y", "{y}", "--n-base", "-3"], r"--n-base -3 must be at least 1"),
    ("temperature-zero", [*AL, "--x", "{x}", "--y", "{y}", "--map-temperature", "0"], r"--map-temperature 0.0 must be a positive"),
    ("sections-bogus", ["--out", "{out}", "--x", "{x}", "--y", "{y}", "--sections", "bogus"], r"--sections 'bogus'"),
    ("layer-kernels-bogus", [*AL, "--x", "{x}", "--y", "{y}", "--layer-kernels", "cubic"], r"--layer-kernels 'cubic'"),
    ("match-seeds-bogus", [*AL, "--x", "{x}", "--y", "{y}", "--match-seeds", "a,b"], r"--match-seeds must be a comma list"),
    ("synthetic-tiny", ["--out", "{out}", "--synthetic", "2"], r"--synthetic 2 must be at least 8"),
    ("synthetic-and-files", [*AL, "--synthetic", "100", "--x", "{x}", "--y", "{y}"], r"either --synthetic N or --x/--y"),
    ("out-unwritable", ["--out", UNWRITABLE, "--x", "{x}", "--y", "{y}"], r"is not writable"),
    ("out-is-file", ["--out", "{a_file}", "--x", "{x}", "--y", "{y}"], r"--out .*a_file\.txt is a file"),
    ("out-is-file-overwrite", ["--out", "{a_file}", "--overwrite", "--x", "{x}", "--y", "{y}"], r"a_file\.txt is a file"),
    ("out-under-file", ["--out", "{a_file}/sub", "--x", "{x}", "--y", "{y}"], r"a_file\.txt is a file, so no folder can be made under it"),
    ("limit-small", [*AL, "--x", "{x}", "--y", "{y}", "--limit", "3"], r"--limit 3 must be at least 8"),
    ("threads-zero", [*AL, "--x", "{x}", "--y", "{y}", "--threads", "0"], r"--threads 0 must be at least 1"),
    ("match-seeds-repeated", [*AL, "--x", "{x}", "--y", "{y}", "--match-seeds", "0,1,0"], r"--match-seeds '0,1,0' lists seed\(s\) \[0\] more than once"),
    ("matching-too-few-pairs", ["--out", "{out}", "--x", "{x}", "--y", "{y}", "--sections", "matching"], r"requested 320 base \+ 500 query pairs but only 40"),
]


@pytest.mark.parametrize("template,pattern", [c[1:] for c in ALIGN_CASES], ids=[c[0] for c in ALIGN_CASES])
def test_analyses_alignment_bad_input(template, pattern, files, tmp_path, capsys):
    _run_case(alignment_cli.cli, template, pattern, files, tmp_path, capsys)


# ------------------------------------------------------------------------------------------- analyses.extract
EX = ["--out", "{out}", "--images", "{images}", *TINY]
EXTRACT_CASES = [
    ("captions-empty", [*EX, "--captions", "{captions_empty}"], r"captions_empty\.csv is empty"),
    ("captions-latin1", [*EX, "--captions", "{captions_latin1}"], r"captions_latin1\.csv is not UTF-8"),
    ("captions-no-header", [*EX, "--captions", "{captions_no_header}"], r"needs a header with 'image' and 'caption'"),
    ("captions-blank-field", [*EX, "--captions", "{captions_blank}"], r"empty image or caption on line\(s\) \[2\]"),
    ("captions-too-few", [*EX, "--captions", "{captions_few}"], r"has 1 pairs; the analyses need at least 4"),
    ("captions-missing", [*EX, "--captions", "/no/such.csv"], r"captions file /no/such\.csv not found"),
    ("batch-size-zero", [*EX, "--captions", "{captions_few}", "--batch-size", "0"], r"--batch-size 0 must be at least 1"),
    ("batch-size-negative", [*EX, "--captions", "{captions_few}", "--batch-size", "-2"], r"--batch-size -2 must be at least 1"),
    ("images-missing", ["--out", "{out}", "--images", "/no/such/dir", *TINY, "--captions", "{captions_few}"], r"--images /no/such/dir is not a folder"),
    ("device-gpu", [*EX, "--captions", "{captions_few}", "--device", "gpu"], r"--device gpu"),
    ("out-unwritable", ["--out", UNWRITABLE, "--images", "{images}", *TINY, "--captions", "{captions_few}"], r"is not writable"),
    ("out-is-file", ["--out", "{a_file}", "--images", "{images}", *TINY, "--captions", "{captions_few}"], r"a_file\.txt is a file"),
    ("limit-small", [*EX, "--captions", "{captions_few}", "--limit", "2"], r"--limit 2 must be at least 4"),
    ("image-missing", [*EX, "--captions", "{captions_missing_image}"], r"no_such_image\.png"),
]


@pytest.mark.parametrize("template,pattern", [c[1:] for c in EXTRACT_CASES], ids=[c[0] for c in EXTRACT_CASES])
def test_analyses_extract_bad_input(template, pattern, files, tmp_path, capsys):
    _run_case(extract_cli.cli, template, pattern, files, tmp_path, capsys)


def test_catalogue_size():
    cases = [TRACE_CASES, ABLATE_CASES, DATA_CASES, LINEAR_CASES, IW_CASES, ALIGN_CASES, EXTRACT_CASES]
    assert sum(map(len, cases)) >= 60


def test_trace_runs_on_captions_with_emoji_cjk_and_combining_accents(tmp_path, capsys):
    """Unusual characters are input, not errors: byte-level BPE splits them; the run finishes."""
    pieces = json.loads((Path(__file__).parents[1] / "datasets/valse/existence.json").read_text())
    captions = ["There are no \U0001f436 dogs.", "There are no \u732b here.", "There are no cafe\u0301s in the picture."]
    chosen = {}
    for (key, item), caption in zip([kv for kv in pieces.items() if kv[1]["mturk"]["caption"] >= 2][:3], captions):
        foil = caption.replace("no ", "")
        chosen[key] = {**item, "caption": caption, "foil": foil, "declarative_statement": caption,
                       "declarative_statement_foils": [foil], "provenance_of_foils": "zero_to_something"}
    (tmp_path / "valse").mkdir()
    (tmp_path / "valse" / "existence.json").write_text(json.dumps(chosen, ensure_ascii=False), encoding="utf-8")
    argv = ["--task", "existence", *TINY, "--target", "text", "--valse-dir", str(tmp_path / "valse"),
            "--no-progress", "--no-figures", "--out", str(tmp_path / "out")]
    assert trace_cli.cli(argv) == 0, capsys.readouterr().err
    items = (tmp_path / "out" / "items.csv").read_text(encoding="utf-8")
    assert len(items.strip().splitlines()) == 1 + 3  # header + the three items
