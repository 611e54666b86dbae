"""VALSE files: shipped copy, lookup order (repo, installed, env, argument), typed items, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from interp.data import valse
from interp.data.valse import ENV_VAR, PIECES, ValseDataError, find_piece_file, load_piece, read_piece_file

REPO_VALSE = Path(__file__).resolve().parents[1] / "datasets" / "valse"
EXISTENCE_SHA256 = "b20fca52eba86c544083d423345a2e28e60e601ef61c56c9ac1c73a95a3a6d18"


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No env override and an empty sys.prefix, so the repository copy is the one found."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "empty-prefix"))


def test_shipped_files_are_complete_and_unchanged():
    names = sorted(p.name for p in REPO_VALSE.iterdir())
    assert names == sorted([f"{p}.json" for p in PIECES] + ["LICENSE", "PROVENANCE.md"])
    assert "MIT License" in (REPO_VALSE / "LICENSE").read_text()
    digest = hashlib.sha256((REPO_VALSE / "existence.json").read_bytes()).hexdigest()
    assert digest == EXISTENCE_SHA256


@pytest.mark.parametrize("piece", PIECES)
def test_every_piece_loads_with_valid_subset(piece, no_env):
    everything = load_piece(piece, valid_only=False)
    valid = load_piece(piece)
    raw = json.loads((REPO_VALSE / f"{piece}.json").read_text())
    assert [i.item_id for i in everything] == list(raw)
    assert [i.item_id for i in valid] == [k for k, v in raw.items() if v["mturk"]["caption"] >= 2]
    assert 0 < len(valid) < len(everything)
    first = everything[0]
    assert first.piece == piece and first.caption == raw[first.item_id]["caption"]
    assert first.mturk.caption == raw[first.item_id]["mturk"]["caption"]


def test_existence_counts_and_fields(no_env):
    items = load_piece("existence", valid_only=False)
    assert len(items) == 534
    assert sum(i.valid for i in items) == 505
    item = {i.item_id: i for i in items}["existence_visual7w_2371044"]
    assert item.image_file == "v7w_2371044.jpg"
    assert item.caption == "There are no people in the picture."
    assert item.foil == "There are people in the picture."
    assert item.provenance_of_foils == "zero_to_something"
    assert item.dataset == "visual7w"
    assert (item.mturk.caption, item.mturk.foil, item.mturk.other) == (3, 0, 0)
    assert item.extra["declarative_statement_foils"] == ["There are people in the picture."]


def test_lookup_falls_back_to_repository(no_env):
    assert find_piece_file("existence") == REPO_VALSE / "existence.json"


def test_lookup_prefers_installed_share_dir(monkeypatch, tmp_path):
    """Simulates an installed package: <sys.prefix>/share/clip-interp/valse wins over the repo."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    share = tmp_path / "prefix" / "share" / "clip-interp" / "valse"
    share.mkdir(parents=True)
    shutil.copy(REPO_VALSE / "existence.json", share / "existence.json")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert find_piece_file("existence") == share / "existence.json"
    assert len(load_piece("existence")) == 505
    # a piece the installed dir lacks still comes from the repository checkout
    assert find_piece_file("plurals") == REPO_VALSE / "plurals.json"


def test_env_var_and_argument_are_authoritative(monkeypatch, tmp_path, no_env):
    (tmp_path / "env").mkdir()
    (tmp_path / "arg").mkdir()
    shutil.copy(REPO_VALSE / "existence.json", tmp_path / "env" / "existence.json")
    shutil.copy(REPO_VALSE / "existence.json", tmp_path / "arg" / "existence.json")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert find_piece_file("existence") == tmp_path / "env" / "existence.json"
    assert find_piece_file("existence", data_dir=tmp_path / "arg") == tmp_path / "arg" / "existence.json"
    # the env dir lacks plurals: an error naming the env var, no silent fallback to the repo copy
    with pytest.raises(ValseDataError, match=rf"plurals.*\${ENV_VAR}"):
        find_piece_file("plurals")


def test_missing_file_lists_every_place_looked(no_env, tmp_path, monkeypatch):
    monkeypatch.setattr(valse, "_repo_data_dir", lambda: tmp_path / "no-repo")
    with pytest.raises(ValseDataError) as info:
        find_piece_file("existence")
    message = str(info.value)
    assert "installed package data" in message and "repository checkout" in message
    assert str(tmp_path / "no-repo" / "existence.json") in message
    assert "data_dir" in message


def test_unknown_piece_names_the_choices(no_env):
    with pytest.raises(ValseDataError, match="unknown VALSE piece 'existance'.*existence"):
        load_piece("existance")


def test_malformed_json_is_named(tmp_path):
    path = tmp_path / "existence.json"
    path.write_text('{"a": {"caption": "x",}')
    with pytest.raises(ValseDataError, match=r"existence.json is not valid JSON \(line 1"):
        read_piece_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValseDataError, match="must hold a non-empty JSON object"):
        read_piece_file(path)


def test_missing_and_bad_fields_are_listed(tmp_path):
    good = {"caption": "c", "foil": "f", "image_file": "i.jpg", "mturk": {"caption": 3, "foil": 0, "other": 0}}
    data = {
        "ok": good,
        "no_foil": {k: v for k, v in good.items() if k != "foil"},
        "bad_votes": {**good, "mturk": {"caption": "three", "foil": 0, "other": 0}},
        "empty_caption": {**good, "caption": "  "},
    }
    path = tmp_path / "existence.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValseDataError) as info:
        read_piece_file(path)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "'no_foil' has no field 'foil'" in message
    assert "mturk.caption is 'three'" in message
    assert "'empty_caption': field 'caption'" in message
