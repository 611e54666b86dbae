"""Report writer, .npz format, CLI and the tower extractor (tiny random-init open_clip model)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analyses.cli.alignment import main as cli_main
from analyses.cli.alignment import cli as cli_run
from analyses.cli.extract import main as extract_main
from analyses.extract.pairs import extract_pairs, image_tower_layers, read_captions
from analyses.io import EmbeddingSet, load_embeddings, save_embeddings
from analyses.cli.report import _pairs_from_groups
from analyses.similarity import linear_cka
from analyses.synthetic import synthetic_pair
from analyses.validation import AnalysisInputError

SMALL = ["--n-base", "40", "--n-query", "60", "--match-seeds", "0", "--qap-restarts", "2", "--permutations", "10",
         "--folds", "3", "--map-epochs", "3", "--map-min-steps", "0", "--csls-k", "10"]


def test_npz_round_trip_and_pairing_errors(tmp_path):
    x, y = synthetic_pair(50, n_layers=3)
    path = save_embeddings(tmp_path / "x.npz", x)
    back = load_embeddings(path)
    np.testing.assert_array_equal(back.embeddings, x.embeddings)
    assert back.layer_names == x.layer_names and len(back.layers) == 3
    assert back.meta == x.meta and list(back.keys) == list(x.keys)
    assert not list(tmp_path.glob("*.tmp*"))
    np.savez(tmp_path / "bad.npz", emb=np.zeros((3, 2)))
    with pytest.raises(AnalysisInputError, match="no 'embeddings'"):
        load_embeddings(tmp_path / "bad.npz", "--x")
    np.savez(tmp_path / "nan.npz", embeddings=np.array([[0.0, np.nan], [1, 2]]))
    with pytest.raises(AnalysisInputError, match="NaN"):
        load_embeddings(tmp_path / "nan.npz", "--x")
    with pytest.raises(AnalysisInputError, match="no such file"):
        load_embeddings(tmp_path / "missing.npz", "--y")


def test_pairs_from_groups_lists_every_alias():
    pairs = _pairs_from_groups(np.array(["a", "b", "a"]), 3)
    assert sorted(map(tuple, pairs)) == [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)]
    assert _pairs_from_groups(None, 2).tolist() == [[0, 0], [1, 1]]


def test_cli_synthetic_report_is_data_first_and_consistent(tmp_path):
    out = tmp_path / "rep"
    assert cli_main(["--synthetic", "200", "--out", str(out), *SMALL]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "report.md", "cka.csv", "cka_layers.csv", "matching.csv", "alignment.csv",
            "alignment_summary.csv", "maps.csv", "figures", "items"} <= files
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["cka_layers_linear.png", "pk_curves.png"]
    config = json.loads((out / "config.json").read_text())
    assert config["inputs"]["x"]["meta"]["synthetic"] is True and "numpy" in config["versions"]
    assert config["tool"] == "analyses.alignment" and config["complete"] is True
    assert config["figures"] == ["figures/cka_layers_linear.png", "figures/pk_curves.png"]
    assert "![figures/pk_curves.png](figures/pk_curves.png)" in (out / "report.md").read_text()
    # tables agree with direct calls on the same data
    x, y = synthetic_pair(200, seed=0)
    cka = pd.read_csv(out / "cka.csv")
    row = cka[(cka.kernel == "linear") & (~cka.debiased)].iloc[0]
    assert row["cka"] == pytest.approx(linear_cka(x.embeddings, y.embeddings), abs=1e-12)
    assert row["p_value"] == pytest.approx(1 / 11) and row["shuffled_mean"] < 0.2 < row["cka"]
    layers = pd.read_csv(out / "cka_layers.csv")
    assert len(layers) == 16
    diag = layers[layers.x_index == layers.y_index].sort_values("x_index")["cka"].to_numpy()
    assert np.all(np.diff(diag) > 0)  # the planted shared signal grows with depth
    assert "synthetic" in (out / "report.md").read_text()
    # the same settings again: every task is already done, the tables are written again unchanged
    before = {name: (out / name).read_bytes() for name in ("cka.csv", "cka_layers.csv", "alignment.csv", "maps.csv")}
    assert cli_run(["--synthetic", "200", "--out", str(out), *SMALL]) == 0
    assert before == {name: (out / name).read_bytes() for name in before}
    # other settings are refused, naming the difference; bad sections are named before any folder exists
    assert cli_run(["--synthetic", "200", "--out", str(out), *SMALL, "--permutations", "20"]) == 2
    with pytest.raises(AnalysisInputError, match="unknown report section"):
        cli_main(["--synthetic", "50", "--out", str(tmp_path / "r2"), "--sections", "cka,umap"])
    assert not (tmp_path / "r2").exists()  # nothing half-written


def test_matching_split_into_one_task_per_seed_equals_one_call_over_all_seeds():
    """The resumable report runs each matching seed as its own task: the rows equal one call."""
    from analyses.cli.report import ReportOptions, compute_tables
    from analyses.matching import matching_protocol

    x, y = synthetic_pair(120, seed=3)
    for protocol in ("fixed_base", "redraw"):
        opts = ReportOptions(sections=("matching",), seed=5, n_base=30, n_query=40, match_seeds=(2, 0, 7),
                             qap_restarts=3, match_protocol=protocol)
        split = compute_tables(x, y, opts)["matching"].drop(columns="seconds")
        whole = matching_protocol(x.embeddings, y.embeddings, n_base=30, n_query=40, seeds=(2, 0, 7), qap_restarts=3,
                                  protocol=protocol, base_seed=5).drop(columns="seconds")
        pd.testing.assert_frame_equal(split, whole)


def test_interrupted_report_keeps_finished_tasks_and_resumes_to_the_same_tables(tmp_path, monkeypatch, capsys):
    """Ctrl-C during the third task keeps the two finished ones (and says so); the rerun computes only
    the rest, and its tables equal an uninterrupted run's byte for byte."""
    import analyses.cli.report as report

    args = ["--synthetic", "120", *SMALL, "--sections", "cka,layers,alignment,maps"]
    whole = tmp_path / "whole"
    assert cli_main([*args, "--out", str(whole)]) == 0
    original, computed = report.compute_task, []

    def interrupted_third(x, y, opts, task, *rest):
        computed.append(task)
        if len(computed) == 3:
            raise KeyboardInterrupt
        return original(x, y, opts, task, *rest)

    monkeypatch.setattr(report, "compute_task", interrupted_third)
    out = tmp_path / "resumed"
    assert cli_run([*args, "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted: kept the resumable run in {out} (2 items finished); rerun the same command to resume")
    assert len(list((out / "items").glob("*.csv"))) == 2 and not (out / "report.md").exists()
    computed.clear()
    monkeypatch.setattr(report, "compute_task", lambda *a: computed.append(a[3]) or original(*a))
    assert cli_main([*args, "--out", str(out)]) == 0
    assert computed == ["alignment", "maps"]
    for name in ("cka.csv", "cka_layers.csv", "alignment.csv", "alignment_summary.csv", "maps.csv", "report.md"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """The analyses' own bars (permutations, QAP restarts, CKA matrix, map epochs) follow the command's
    progress setting: off here, where stderr is captured."""
    args = ["--synthetic", "80", "--permutations", "50", "--sections", "cka,layers,matching,maps", "--n-base", "20",
            "--n-query", "30", "--match-seeds", "0", "--qap-restarts", "5", "--map-epochs", "2", "--map-min-steps", "0",
            "--layer-kernels", "linear,rbf"]
    assert cli_main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert not [word for word in ("permutations", "QAP restarts", "CKA matrix", "assignment map", "report tasks")
                if word in err], err[-500:]


def test_cli_reads_npz_and_reports_bad_input_in_one_line(tmp_path, capsys):
    x, y = synthetic_pair(120, n_layers=2)
    save_embeddings(tmp_path / "x.npz", x)
    save_embeddings(tmp_path / "y.npz", EmbeddingSet(y.embeddings[:100]))
    code = cli_run(["--x", str(tmp_path / "x.npz"), "--y", str(tmp_path / "y.npz"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--x has 120 rows but --y has 100" in capsys.readouterr().err
    code = cli_run(["--x", str(tmp_path / "x.npz"), "--y", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o"),
                    "--n-base", "100", "--n-query", "50", "--sections", "matching"])
    assert code == 2 and "requested 100 base + 50 query pairs but only 120" in capsys.readouterr().err


def _write_images(folder, n):
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(40 + 7 * i, 50, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        names.append(f"img{i}.png")
    return names


def test_extractor_on_the_tiny_model_is_on_the_data_path(tmp_path):
    from interp.models.compat import import_open_clip
    from interp.models.loading import create_open_clip_model

    names = _write_images(tmp_path, 3)
    images = [names[0], names[1], names[0], names[2], names[1]]
    captions = ["a red car", "a dog on grass", "a car that is red", "two birds", "a small dog"]
    x, y = extract_pairs("tiny", "none", images, captions, images_dir=tmp_path, seed=0, batch_size=2)
    assert x.embeddings.shape == (5, 32) and y.embeddings.shape == (5, 32)
    assert len(x.layers) == 2 and x.layers[0].shape == (5, 64) and len(y.layers) == 3
    np.testing.assert_array_equal(x.embeddings[0], x.embeddings[2])  # same image -> same row
    assert list(x.groups) == images and x.meta["tower"] == "image" and y.meta["pretrained"] is None
    clip = create_open_clip_model("tiny", None, seed=0)
    # the hooked CLS state after the last block, through ln_post and proj, is the image embedding
    v = clip.visual
    with torch.no_grad():
        recon = (v.ln_post(torch.as_tensor(x.layers[-1], dtype=torch.float32)) @ v.proj).double().numpy()
    np.testing.assert_allclose(recon, x.embeddings, atol=1e-5)
    # the text side equals open_clip's own encode_text of the same weights
    tok = import_open_clip().get_tokenizer("ViT-B-32")
    with torch.no_grad():
        ref = clip.encode_text(tok(captions)).double().numpy()
    np.testing.assert_allclose(y.embeddings, ref, atol=1e-5)
    # pre-built pixels give the same result as the folder
    from interp.data.images import PreprocessConfig, load_image_batch

    pixels = load_image_batch([tmp_path / n for n in names], PreprocessConfig.from_model(clip))
    x2, _ = extract_pairs("tiny", "none", images, captions, pixels=pixels, seed=0)
    np.testing.assert_allclose(x2.embeddings, x.embeddings, atol=1e-6)
    layers, final = image_tower_layers(clip, pixels, batch_size=3)
    assert layers.shape == (2, 3, 64) and final.shape == (3, 32)


def test_extract_cli_then_report_on_tiny_model(tmp_path):
    names = _write_images(tmp_path, 6)
    rows = [(names[i % 6], f"caption number {i} about picture {i % 6}") for i in range(24)]
    (tmp_path / "captions.csv").write_text("image,caption\n" + "\n".join(f"{a},{b}" for a, b in rows))
    assert extract_main(["--images", str(tmp_path), "--captions", str(tmp_path / "captions.csv"),
                         "--out", str(tmp_path / "emb"), "--model", "tiny", "--pretrained", "none"]) == 0
    extract_settings = json.loads((tmp_path / "emb/config.json").read_text())["settings"]
    assert extract_settings["preset"] == "none" and extract_settings["preprocess"] == "open_clip"
    assert "Preset: none" in (tmp_path / "emb/report.md").read_text()
    out = tmp_path / "rep"
    assert cli_main(["--x", str(tmp_path / "emb/image.npz"), "--y", str(tmp_path / "emb/text.npz"), "--out", str(out),
                     "--n-base", "8", "--n-query", "10", "--match-seeds", "0", "--qap-restarts", "2",
                     "--permutations", "5", "--folds", "3", "--map-epochs", "2", "--map-min-steps", "0", "--csls-k", "5"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["inputs"]["x"]["meta"]["model"] == "tiny" and "random init" in config["inputs"]["x"]["description"]
    assert pd.read_csv(out / "cka_layers.csv").shape[0] == 6  # 2 image blocks x 3 text states
    # alias groups: 4 captions per image, so each source has 4 gold targets
    assert (pd.read_csv(out / "alignment.csv")["n_test"].sum()) == 2 * 24
    # --limit keeps the first N pairs: the same rows as the full run's first N
    assert extract_main(["--images", str(tmp_path), "--captions", str(tmp_path / "captions.csv"), "--limit", "5",
                         "--out", str(tmp_path / "emb5"), "--model", "tiny", "--pretrained", "none"]) == 0
    full, first = load_embeddings(tmp_path / "emb/text.npz"), load_embeddings(tmp_path / "emb5/text.npz")
    assert first.n == 5 and list(first.keys) == list(full.keys[:5])
    np.testing.assert_allclose(first.embeddings, full.embeddings[:5], atol=1e-6)
    assert pd.read_csv(tmp_path / "emb5/pairs.csv")["caption"].tolist() == [caption for _, caption in rows[:5]]


def test_read_captions_errors(tmp_path):
    (tmp_path / "c.csv").write_text("file,text\na.png,hi\n")
    with pytest.raises(AnalysisInputError, match="needs a header with 'image' and 'caption'"):
        read_captions(tmp_path / "c.csv")
    with pytest.raises(AnalysisInputError, match="not found"):
        read_captions(tmp_path / "none.csv")


def test_package_exports_resolve():
    import analyses

    for name in analyses.__all__:
        assert callable(getattr(analyses, name)), name
    with pytest.raises(AttributeError):
        analyses.no_such_name  # noqa: B018
