"""Long texts are read in windows of whole sentences: spans map back to the whole document, what overlapping
windows both found is kept once, every item names its window, and nothing of the text is left unread."""

from __future__ import annotations

import pytest

from reamo.agent import Agent, AgentSettings
from reamo.model import ReamoConfig, ReamoModel
from reamo.segmenting import sentence_spans, split_windows
from reamo.tools.registry import ToolRegistry

SENTENCES = [
    "Rafael Nadal won the title in Paris on Sunday.",
    "Angela Merkel met Emmanuel Macron in Berlin to discuss the budget.",
    "Police arrested two protesters near the Eiffel Tower.",
    "Lionel Messi signed with Inter Miami in Florida.",
]


def words(text: str) -> int:
    return len(text.split())


def test_windows_are_whole_sentences_that_cover_the_text() -> None:
    text = " ".join(SENTENCES * 5)
    windows = split_windows(text, words, window_tokens=25)
    assert len(windows) > 1
    for window in windows:
        assert text[window.start:window.end] == window.text and words(window.text) <= 25
        assert window.text[-1] == "."  # whole sentences only
    covered = "".join(text[w.start:w.end] for w in windows)
    assert covered.replace(" ", "") == text.replace(" ", "")  # every sentence read once
    assert split_windows("Short text.", words, window_tokens=25)[0].text == "Short text."
    assert [text[s:e] for s, e in sentence_spans(" ".join(SENTENCES))] == SENTENCES


def test_sentences_share_a_window_only_up_to_the_pack_size() -> None:
    text = " ".join(SENTENCES * 3)
    packed = split_windows(text, words, window_tokens=40)
    alone = split_windows(text, words, window_tokens=40, pack_tokens=12)
    assert len(packed) < len(alone) == len(SENTENCES) * 3  # each sentence (8-11 words) in its own window
    assert [w.text for w in alone] == SENTENCES * 3
    assert split_windows(" ".join(SENTENCES), words, window_tokens=40, pack_tokens=12)[0].text == " ".join(SENTENCES)


def test_a_sentence_longer_than_a_window_is_cut_into_overlapping_pieces() -> None:
    long_sentence = " ".join(f"word{i}" for i in range(100)) + "."
    windows = split_windows(long_sentence, words, window_tokens=30, overlap_words=5)
    assert len(windows) >= 4 and all(words(w.text) <= 30 for w in windows)
    for before, after in zip(windows, windows[1:]):
        assert after.start < before.end  # overlap: a mention at the cut is whole in one of them
    assert windows[0].start == 0 and windows[-1].end == len(long_sentence)


@pytest.fixture(scope="module")
def agent(tiny_llm_dir) -> Agent:
    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir)))
    return Agent(model, registry=ToolRegistry(), settings=AgentSettings(few_shot=False, window_tokens=24))


def test_items_of_each_window_map_back_to_the_document(agent: Agent) -> None:
    text = " ".join(SENTENCES)
    request = agent.prepare(text, tasks=("ner", "re"))
    assert len(request.segments) > 1
    raws = []
    for segment in request.segments:  # what a model would write for each window: its capitalized names
        names = [n for n in ("Rafael Nadal", "Paris", "Angela Merkel", "Berlin", "Police", "Lionel Messi", "Florida")
                 if n in segment.window.text]
        raws.append("Entities: " + "".join(f"({n}, PER)" for n in names) + "\nRelations: None")
    result = agent.finish(request, raws)
    assert {e.text for e in result.entities} == {"Rafael Nadal", "Paris", "Angela Merkel", "Berlin", "Police",
                                                 "Lionel Messi", "Florida"}
    for entity in result.entities:
        assert text[entity.span.start:entity.span.end] == entity.text
        window = result.windows[entity.window]
        assert window.start <= entity.span.start and entity.span.end <= window.end
    assert len(result.windows) == len(request.segments)


def test_overlapping_windows_keep_a_mention_once(agent: Agent) -> None:
    text = "Rafael Nadal " + " ".join(f"plays{i}" for i in range(40)) + " with Mery Perello in Mallorca."
    request = agent.prepare(text, tasks=("ner",))
    assert len(request.segments) > 1
    raws = ["Entities: " + "".join(f"({n}, PER)" for n in ("Rafael Nadal", "Mery Perello", "Mallorca")
                                    if n in s.window.text) for s in request.segments]
    result = agent.finish(request, raws)
    assert sorted(e.text for e in result.entities) == ["Mallorca", "Mery Perello", "Rafael Nadal"]
    assert len({(e.span.start, e.span.end) for e in result.entities}) == 3


def test_a_document_of_any_length_is_prepared(agent: Agent) -> None:
    text = " ".join(SENTENCES * 400)  # ~16,000 words, far past the LLM's context
    request = agent.prepare(text, tasks=("ner",))
    assert len(request.segments) > 100
    assert all(len(agent.model.tokenize_with_placeholders(s.prompt)) < 512 for s in request.segments)
