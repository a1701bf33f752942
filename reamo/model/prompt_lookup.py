"""Prompt-lookup drafts for speculative greedy decoding (Saxena 2023; transformers' `prompt_lookup_num_tokens`).

An extraction answer mostly copies the input: entity names, and the protocol's own words ("Entities: (") that the
system prompt spells out. So the text that followed the latest earlier occurrence of the answer's last characters
is a good guess at what comes next. The model checks a whole guess in one forward pass and keeps the part its own
greedy choices agree with, so the answer is the greedy answer; only the number of forward passes shrinks.

The match is made on text, not token ids: a name inside a sentence (" Ted", " Cruz") is tokenized differently
from the same name after "(" in the answer ("T", "ed", " Cruz"), which a token-id match never finds. Token ids are
the fallback, for the answer's own repeated pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def token_draft(context: Sequence[int], max_tokens: int, min_ngram: int = 2, max_ngram: int = 3) -> list[int]:
    """Up to `max_tokens` ids that followed the latest earlier occurrence of the context's last n-gram, trying
    n = max_ngram down to min_ngram (a longer match is a surer guess); [] when nothing matches."""
    if max_tokens < 1:
        return []
    ids = list(context)  # one copy; slices of it compare without converting each
    length = len(ids)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        tail = ids[length - n:]
        for start in range(length - n - 1, -1, -1):  # latest first
            if ids[start:start + n] == tail:
                return ids[start + n:start + n + max_tokens]
    return []


def text_match(source: str, written: str, max_chars: int = 32, min_chars: int = 3) -> int | None:
    """Where in `source` the text after the longest suffix of `written` (at most `max_chars`) starts, taking its
    latest occurrence; a suffix shorter than `min_chars` counts only as a whole word start on both sides (the
    "T" of "(T" is a name's start, not any T). None when no suffix is found."""
    for size in range(min(len(written), max_chars), 0, -1):
        key = written[-size:]
        short = size < min_chars
        if short and size < len(written) and written[-size - 1].isalnum():
            return None  # the suffix starts inside a word: a shorter one would too
        end = len(source)
        while (pos := source.rfind(key, 0, end)) >= 0:
            if not short or pos == 0 or not source[pos - 1].isalnum():
                return pos + size
            end = pos + size - 1
    return None


class PromptLookup:
    """Drafts for one generated row: text copied from its prompt, else the answer's own repeated token n-grams."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], draft_chars: int = 64) -> None:
        self.tokenizer = tokenizer
        self.prompt_ids = [int(t) for t in prompt_ids]
        # media placeholders (negative ids) have no text
        self.source = tokenizer.decode([t for t in self.prompt_ids if t >= 0], skip_special_tokens=True)
        self.draft_chars = draft_chars

    def draft(self, written: Sequence[int], max_tokens: int) -> list[int]:
        """Up to `max_tokens` guessed next token ids after the answer `written` so far."""
        if max_tokens < 1 or not written:
            return []
        start = text_match(self.source, self.tokenizer.decode(list(written), skip_special_tokens=True))
        if start is not None and start < len(self.source):
            follow = self.source[start:start + self.draft_chars]
            ids = self.tokenizer(follow, add_special_tokens=False)["input_ids"][:max_tokens]
            if ids:
                return list(ids)
        return token_draft(self.prompt_ids + list(written), max_tokens)
