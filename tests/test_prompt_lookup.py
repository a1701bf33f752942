"""Prompt-lookup drafts: text copied from the prompt where the answer's last characters occur in it."""

from __future__ import annotations

import pytest

from reamo.model.prompt_lookup import PromptLookup, text_match, token_draft


def test_token_draft_takes_the_latest_longest_match() -> None:
    assert token_draft([1, 2, 3, 9, 1, 2, 4, 5, 1, 2], 3) == [4, 5, 1]  # latest occurrence of (1, 2)
    assert token_draft([7, 8, 9, 7, 8], 2) == [9, 7]
    assert token_draft([1, 2, 3], 4) == []  # no earlier (2, 3)
    assert token_draft([1, 2, 1, 2], 0) == []


def test_text_match_needs_a_word_start_for_a_short_suffix() -> None:
    source = "RT @ MT : Ted Cruz speaks"
    assert source[text_match(source, "Entities: (T"):].startswith("ed Cruz")  # "T" as a name's start, not "RT"
    assert source[text_match(source, "(Ted Cr"):] == "uz speaks"
    assert text_match(source, "(Tx") is None
    assert text_match(source, "") is None


@pytest.fixture(scope="module")
def tokenizer(tiny_llm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llm_dir)


def test_drafts_copy_the_name_the_answer_has_started(tokenizer) -> None:
    prompt = "Text: yesterday Rafael Nadal gets engaged to Mery Perello in Mallorca."
    lookup = PromptLookup(tokenizer, tokenizer(prompt)["input_ids"] + [-1])  # a media placeholder has no text
    written = tokenizer("Entities: (Rafael Na", add_special_tokens=False)["input_ids"]
    draft = lookup.draft(written, 4)
    assert 0 < len(draft) <= 4
    assert tokenizer.decode(written + draft).startswith("Entities: (Rafael Nadal gets")
    assert lookup.draft(written, 0) == [] and lookup.draft([], 4) == []
