"""Concept-set files: built-ins load, prompts enumerate row-major, bad sets fail with clear messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes.concepts import (
    ConceptSetError,
    builtin_names,
    concept_set_from_dict,
    load_concept_set,
    load_idiom_tests,
)


def _set(**over):
    base = {
        "name": "t",
        "template": "a photo of a {colour} {object}",
        "factors": [{"name": "colour", "values": ["red", "blue"]},
                    {"name": "object", "values": ["car", "cup", "hat"]}],
    }
    base.update(over)
    return base


def test_builtins_load_and_are_valid():
    names = builtin_names()
    assert {"colours_objects", "materials_objects", "size_animals"} <= set(names)
    for name in names:
        cs = load_concept_set(name)
        assert cs.has_single_words
        assert len(cs.prompts()) == cs.n_combinations == int(np.prod(cs.shape))
        assert len(set(cs.prompts())) == cs.n_combinations
    tests = load_idiom_tests()
    assert tests[0].name == "warm_cold_shoulder"
    assert "a photo of a cold shoulder" in tests[0].idiom.prompts()
    assert "a photo of a cold shower" in tests[0].control.prompts()


def test_prompt_order_is_row_major():
    cs = concept_set_from_dict(_set())
    prompts = cs.prompts()
    assert cs.shape == (2, 3) and cs.rank_bound == 4
    idx = np.ravel_multi_index((1, 2), cs.shape)
    assert prompts[idx] == "a photo of a blue hat"
    assert cs.combinations()[idx] == ("blue", "hat")


def test_user_files_yaml_and_json(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(_set(single_templates={"colour": "a {colour} thing",
                                                   "object": "a {object}"})))
    cs = load_concept_set(p)
    assert cs.single_word_prompts("object") == ["a car", "a cup", "a hat"]
    q = tmp_path / "mine.yaml"
    q.write_text("name: y\ntemplate: '{a} {b} {c}'\nfactors:\n - {name: a, values: [x, y]}\n"
                 " - {name: b, values: [p, q]}\n - {name: c, values: [m, n]}\n")
    assert load_concept_set(q).shape == (2, 2, 2)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"factors": [{"name": "colour", "values": ["red"]},
                      {"name": "object", "values": ["car", "cup"]}]}, "at least two values"),
        ({"factors": [{"name": "colour", "values": ["red", "red", "blue"]},
                      {"name": "object", "values": ["car", "cup"]}]}, r"repeats value\(s\) \['red'\]"),
        ({"template": "a photo of a {colour} thing"}, r"no placeholder for factor\(s\) \['object'\]"),
        ({"template": "a {colour} {object} {size}"}, "not factors"),
        ({"single_templates": {"colour": "a photo"}}, "exactly one placeholder"),
        ({"single_templates": {"shape": "a {shape}"}}, "not one of"),
        ({"factors": [{"name": "colour", "values": "red"}]}, "must be a list"),
    ],
)
def test_bad_sets(over, message):
    with pytest.raises(ConceptSetError, match=message):
        concept_set_from_dict(_set(**over))


def test_missing_keys_and_files(tmp_path):
    with pytest.raises(ConceptSetError, match="no 'template' key"):
        concept_set_from_dict({"name": "x", "factors": []})
    with pytest.raises(ConceptSetError, match="not found"):
        load_concept_set(tmp_path / "nope.yaml")
    with pytest.raises(ConceptSetError, match="unknown concept set 'nope'"):
        load_concept_set("nope")
    cs = concept_set_from_dict(_set())
    with pytest.raises(ConceptSetError, match="no single-word template"):
        cs.single_word_prompts("colour")
