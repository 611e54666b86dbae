"""Existence minimal pairs: the counts of docs/data.md, token alignment and roles (CLIP BPE and
BERT WordPiece), and rejections reported with a reason."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest

from interp.data.negation import (
    ROLES,
    AlignedPair,
    NegationPair,
    Rejection,
    align_pair,
    align_pairs,
    load_existence_pairs,
    role_table,
)
from interp.data.valse import ValseDataError
from interp.models.tokenization import CLIPTokenizer

REPO_VALSE = Path(__file__).resolve().parents[1] / "datasets" / "valse"


@pytest.fixture(scope="module")
def existence():
    return load_existence_pairs(data_dir=REPO_VALSE)


@pytest.fixture(scope="module")
def clip_aligned(existence):
    return align_pairs(existence.pairs, CLIPTokenizer())


@pytest.fixture(scope="module")
def wordpiece_aligned(existence):
    # the project's tokenizer for the MiniLM encoder (all-MiniLM-L6-v2's packaged vocabulary)
    from interp.models.bert import WordPieceTokenizer, minilm_directory

    return align_pairs(existence.pairs, WordPieceTokenizer.from_directory(minilm_directory(), 256))


def test_counts_match_the_spec(existence):
    c = existence.counts
    assert (c["raw"], c["valid"], c["minimal_pairs"]) == (534, 505, 490)
    assert (c["valid_caption"], c["valid_foil"]) == (256, 249)
    assert (c["minimal_pairs_caption"], c["minimal_pairs_foil"]) == (250, 240)
    assert len(existence.pairs) == 490
    # every item of the file is either a pair or an exclusion with its reason
    ids = [p.item_id for p in existence.pairs] + [e.item_id for e in existence.exclusions]
    assert len(ids) == len(set(ids)) == 534
    reasons = collections.Counter(
        "invalid" if "valid set" in e.reason else e.reason for e in existence.exclusions
    )
    assert reasons == {"invalid": 29, "caption does not start with There are/There is": 15}


def test_without_valid_filter_invalid_items_enter(existence):
    everything = load_existence_pairs(valid_only=False, data_dir=REPO_VALSE)
    assert everything.counts["raw"] == 534 and everything.counts["valid"] == 505
    assert everything.counts["minimal_pairs"] > 490
    assert {p.item_id for p in existence.pairs} < {p.item_id for p in everything.pairs}
    assert any(not p.valid for p in everything.pairs)


def test_pair_texts_follow_the_rule(existence):
    by_id = {p.item_id: p for p in existence.pairs}
    p = by_id["existence_visual7w_2371044"]  # caption negated, "There are" -> insert "some"
    assert p.negation_side == "caption"
    assert p.negated == p.caption == "There are no people in the picture."
    assert p.affirmative == p.foil == "There are some people in the picture."
    assert p.original_foil == "There are people in the picture."
    q = by_id["existence_visual7w_2377797"]  # foil negated, "There is a" stays
    assert q.negation_side == "foil"
    assert q.negated == q.foil == q.original_foil == "There is no black horses in the scene."
    assert q.affirmative == q.caption == q.original_caption == "There is a black horses in the scene."
    for pair in existence.pairs:
        assert {pair.caption, pair.foil} == {pair.negated, pair.affirmative}
        assert pair.negated.split()[2] == "no"
        assert pair.affirmative.split()[2] in ("some", "a")


def test_all_490_align_with_clip_bpe(clip_aligned):
    aligned, rejected = clip_aligned
    assert len(aligned) == 490 and rejected == []
    lengths = collections.Counter(a.length for a in aligned)
    assert min(lengths) == 7 and max(lengths) == 16  # spec: lengths run 7 to 16 tokens
    for a in aligned:
        assert a.negator_pos == 3
        assert len(a.roles) == a.length == len(a.tokens_affirmative)
        diff = [i for i, (x, y) in enumerate(zip(a.tokens_negated, a.tokens_affirmative)) if x != y]
        assert diff == [3]
        assert a.tokens_negated[0] == 49406 and a.tokens_negated[-1] == 49407


# (item, CLIP tokens of N, roles) written out by hand from the role definitions of docs/data.md.
HAND_ROLE_TABLE = {
    "existence_visual7w_2393805": (  # "There are no animals." : no further tokens
        ["<start_of_text>", "there</w>", "are</w>", "no</w>", "animals</w>", ".</w>", "<end_of_text>"],
        ["SOT", "there", "is/are", "negator", "first_subject", "period", "EOT"],
    ),
    "existence_visual7w_2377797": (  # "There is no black horses in the scene." / "There is a ..."
        ["<start_of_text>", "there</w>", "is</w>", "no</w>", "black</w>", "horses</w>", "in</w>",
         "the</w>", "scene</w>", ".</w>", "<end_of_text>"],
        ["SOT", "there", "is/are", "negator", "first_subject", "further", "further", "further",
         "further", "period", "EOT"],
    ),
    "existence_visual7w_2371044": (  # "There are no people in the picture."
        ["<start_of_text>", "there</w>", "are</w>", "no</w>", "people</w>", "in</w>", "the</w>",
         "picture</w>", ".</w>", "<end_of_text>"],
        ["SOT", "there", "is/are", "negator", "first_subject", "further", "further", "further",
         "period", "EOT"],
    ),
}


def test_clip_role_table_on_sample_items(clip_aligned):
    by_id = {a.pair.item_id: a for a in clip_aligned[0]}
    for item_id, (tokens, roles) in HAND_ROLE_TABLE.items():
        a = by_id[item_id]
        assert list(a.str_tokens_negated) == tokens
        assert list(a.roles) == roles
    horses = by_id["existence_visual7w_2377797"]
    assert horses.str_tokens_affirmative[3] == "a</w>"
    assert horses.positions("further") == (5, 6, 7, 8)
    assert horses.positions("period") == (9,)
    assert by_id["existence_visual7w_2393805"].positions("further") == ()
    table = role_table([horses])
    assert list(table["role"]) == HAND_ROLE_TABLE["existence_visual7w_2377797"][1]
    assert list(table["token_affirmative"])[3] == "a</w>"


def test_roles_follow_the_tokenization_for_wordpiece(wordpiece_aligned, clip_aligned):
    aligned, rejected = wordpiece_aligned
    assert len(aligned) == 490 and rejected == []
    by_id = {a.pair.item_id: a for a in aligned}
    a = by_id["existence_visual7w_2362752"]  # "There are no skateboarders." -> skate ##board ##ers
    assert list(a.str_tokens_negated) == ["[CLS]", "there", "are", "no", "skate", "##board", "##ers", ".", "[SEP]"]
    assert list(a.roles) == ["SOT", "there", "is/are", "negator", "first_subject", "further", "further",
                             "period", "EOT"]
    assert a.str_tokens_affirmative[3] == "some"
    # WordPiece splits words CLIP keeps whole: roles come from each tokenization, not a fixed table
    clip = {x.pair.item_id: x for x in clip_aligned[0]}
    pizzas, wp_pizzas = clip["existence_visual7w_2364922"], by_id["existence_visual7w_2364922"]
    assert pizzas.str_tokens_negated[4] == "pizzas</w>" and pizzas.length == 7
    assert wp_pizzas.str_tokens_negated[4:6] == ("pizza", "##s") and wp_pizzas.length == 8
    assert pizzas.positions("further") == () and wp_pizzas.positions("further") == (5,)
    assert wp_pizzas.positions("period") == (6,) and wp_pizzas.positions("EOT") == (7,)


def _pair(negated, affirmative):
    return NegationPair("planted", "x.jpg", negated, affirmative, "caption", negated, affirmative,
                        negated, affirmative)


def test_misaligned_pairs_are_rejected_with_reasons():
    tok = CLIPTokenizer()
    pairs = [
        _pair("There are no people.", "There are some young people."),  # length differs
        _pair("There are no people.", "There are some dogs."),  # two positions differ
        _pair("There are no people!", "There are some people!"),  # no period
        _pair("Here are no people.", "Here are some people."),  # no 'there'
        _pair("There are no people.", "There are some people."),  # fine
    ]
    aligned, rejected = align_pairs(pairs, tok)
    assert [a.pair.negated for a in aligned] == ["There are no people."]
    reasons = [r.reason for r in rejected]
    assert "different lengths (7 vs 8 tokens)" in reasons[0]
    assert "differ at positions [3, 4]" in reasons[1]
    assert "not the period" in reasons[2]
    assert "'there'" in reasons[3]
    assert all(isinstance(r, Rejection) for r in rejected)


def test_tokenizer_without_special_tokens_is_rejected():
    class Bare:
        def __init__(self):
            self._clip = CLIPTokenizer()

        def encode(self, text):
            return self._clip.encode(text)[1:-1]

        def str_tokens(self, text):
            return self._clip.str_tokens(text)[1:-1]

    result = align_pair(_pair("There are no people.", "There are some people."), Bare())
    assert isinstance(result, Rejection) and "special tokens" in result.reason


def test_roles_constant_and_positions_api(clip_aligned):
    assert ROLES == ("SOT", "there", "is/are", "negator", "first_subject", "further", "period", "EOT")
    a: AlignedPair = clip_aligned[0][0]
    assert sorted(p for r in ROLES for p in a.positions(r)) == list(range(a.length))
    with pytest.raises(ValueError, match="unknown role"):
        a.positions("subject")


def test_bad_provenance_is_a_clear_error(tmp_path):
    data = json.loads((REPO_VALSE / "existence.json").read_text())
    first = next(iter(data))
    data[first]["provenance_of_foils"] = "sideways"
    (tmp_path / "existence.json").write_text(json.dumps(data))
    with pytest.raises(ValseDataError, match=f"{first}.*provenance_of_foils='sideways'"):
        load_existence_pairs(data_dir=tmp_path)


def test_missing_existence_file_in_data_dir(tmp_path):
    with pytest.raises(ValseDataError, match="existence.*data_dir argument"):
        load_existence_pairs(data_dir=tmp_path)
    shutil.rmtree(tmp_path)


def test_cli_writes_the_tables(tmp_path):
    import pandas as pd

    from interp.cli.common import run_cli
    from interp.cli.data import main

    out = tmp_path / "out"
    code = run_cli(main, ["--model", "tiny", "--pretrained", "none", "--out", str(out),
                          "--valse-dir", str(REPO_VALSE)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "counts.json", "exclusions.csv", "pairs.csv", "report.md", "roles.csv"]
    meta = json.loads((out / "counts.json").read_text())
    assert meta["counts"]["minimal_pairs"] == 490 and meta["counts"]["aligned"] == 490
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 490 and pairs["n_tokens"].between(7, 16).all()
    assert len(pd.read_csv(out / "exclusions.csv")) == 44
    roles = pd.read_csv(out / "roles.csv")
    assert len(roles) == pairs["n_tokens"].sum()
    # a user error ends with exit code 2 and one line, not a traceback
    assert run_cli(main, ["--model", "tiny", "--pretrained", "none", "--out", str(tmp_path / "other"),
                          "--valse-dir", str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "other").exists()
