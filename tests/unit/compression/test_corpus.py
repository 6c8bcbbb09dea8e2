"""The offline sentence corpus: enough, unique, deterministic, prose only."""

from __future__ import annotations

from compression.corpus import (
    MAX_CHARS,
    MIN_CHARS,
    deduplicated,
    english_sentences,
    is_prose_sentence,
    paragraphs,
    split_sentences,
    spread,
)


def test_corpus_is_large_unique_and_deterministic() -> None:
    sentences = english_sentences()
    assert len(sentences) >= 200
    assert len({s.lower() for s in sentences}) == len(sentences)
    assert sentences == english_sentences()
    assert all(MIN_CHARS <= len(s) <= MAX_CHARS for s in sentences)


def test_limit_spreads_over_every_source() -> None:
    everything = english_sentences()
    chosen = english_sentences(200)
    assert len(chosen) == 200 and chosen[0] == everything[0]
    assert everything.index(chosen[-1]) > len(everything) * 0.9


def test_split_keeps_abbreviations_inside_sentences() -> None:
    text = "Models such as e.g. Trees are used widely here. They work well on tabular data sets."
    assert split_sentences(text) == [
        "Models such as e.g. Trees are used widely here.",
        "They work well on tabular data sets.",
    ]


def test_code_and_markup_are_not_prose() -> None:
    assert is_prose_sentence("The iris data set holds three classes of fifty instances each.")
    assert not is_prose_sentence("Call read_csv on the path and return the frame as is.")
    assert not is_prose_sentence(">>> from sklearn import datasets and then load it now.")
    assert not is_prose_sentence("Use the ``fit`` method before you call predict on new data.")
    assert not is_prose_sentence("too short.")


def test_paragraphs_drop_rst_markup_lines() -> None:
    text = "Title\n=====\n\nFirst line of prose\ncontinues here.\n\n:Attribute: value\n.. note:: x\n"
    assert list(paragraphs(text)) == ["Title", "First line of prose continues here."]


def test_dedup_and_spread_helpers() -> None:
    assert deduplicated(["A b c.", "a, B c!", "D e."]) == ["A b c.", "D e."]
    assert spread(list("abcdefghij"), 5) == list("acegi")
    assert spread(list("abc"), 5) == list("abc")
