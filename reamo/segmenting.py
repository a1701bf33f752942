"""Long texts as windows of whole sentences, so a document of any length is read the way the model was tuned.

The embedded default was tuned on tweets and single news sentences (at most 512 tokens): on a 3,000-word article
in one prompt it found the last sentence's entities only, and past the LLM's context window nothing at all. So a
text longer than `window_tokens` is cut at sentence boundaries (spaCy's rule-based sentencizer) into windows of
whole sentences; a sentence longer than a window is cut at word boundaries into overlapping pieces, so a mention at
a cut is whole in one of them. Each window keeps its character offset, so spans map back to the document.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field


class Window(BaseModel):
    """A piece of the request text: `text == document[start:start + len(text)]`."""

    model_config = ConfigDict(extra="forbid")

    start: int = Field(ge=0)
    text: str

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@functools.lru_cache(maxsize=1)
def _sentencizer():  # type: ignore[no-untyped-def]
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.max_length = 10**8
    return nlp


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the sentences of `text`, whitespace around them left out."""
    spans = []
    for sentence in _sentencizer()(text).sents:
        start, end = sentence.start_char, sentence.end_char
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


def _split_long(text: str, start: int, end: int, count: Callable[[str], int], limit: int,
                overlap_words: int) -> list[tuple[int, int]]:
    """A sentence longer than `limit` tokens as word-boundary pieces of at most `limit` tokens, each starting
    `overlap_words` words before the previous piece ended."""
    words = [(start + m.start(), start + m.end()) for m in re.finditer(r"\S+", text[start:end])]
    pieces: list[tuple[int, int]] = []
    first = 0
    while first < len(words):
        last = first
        while last + 1 < len(words) and count(text[words[first][0]:words[last + 1][1]]) <= limit:
            last += 1
        pieces.append((words[first][0], words[last][1]))
        if last + 1 >= len(words):
            break
        first = max(first + 1, last + 1 - overlap_words)
    return pieces


def split_windows(text: str, count_tokens: Callable[[str], int], window_tokens: int = 128,
                  overlap_words: int = 8, pack_tokens: int | None = None) -> list[Window]:
    """`text` as one window when it fits in `window_tokens`, else as windows of consecutive whole sentences: a
    window holds several sentences only while they fit in `pack_tokens` (default `window_tokens`), a sentence of
    up to `window_tokens` is never cut, a longer one is cut into overlapping word pieces of `window_tokens`.
    A small model reads one sentence at a time as it was tuned (news sentences, tweets); packed into one prompt,
    several sentences lose entities (see `AgentSettings.sentence_window_tokens`)."""
    pack = min(pack_tokens or window_tokens, window_tokens)
    if not text.strip() or count_tokens(text) <= window_tokens:
        return [Window(start=0, text=text)]
    pieces: list[tuple[int, int]] = []
    for start, end in sentence_spans(text):
        if count_tokens(text[start:end]) > window_tokens:
            pieces.extend(_split_long(text, start, end, count_tokens, window_tokens, overlap_words))
        else:
            pieces.append((start, end))
    windows: list[Window] = []
    current: tuple[int, int] | None = None
    for start, end in pieces:
        if current is not None and start >= current[1] and count_tokens(text[current[0]:end]) <= pack:
            current = (current[0], end)
            continue
        if current is not None:
            windows.append(Window(start=current[0], text=text[current[0]:current[1]]))
        current = (start, end)
    if current is not None:
        windows.append(Window(start=current[0], text=text[current[0]:current[1]]))
    return windows
