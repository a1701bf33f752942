"""The speech version of a dataset, as the MUIE benchmark built its audio sets: each sentence spoken by espeak-ng
(voice and speed varied), the agent given the audio alone, and its extractions scored against the written gold.

The agent's spans point into its own transcript; `realign` moves every mention onto the gold sentence (by text),
so exact scoring asks that the entity text came through ASR correctly, while its audio time span stays attached.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reamo.alignment import find_span
from reamo.datasets import Example
from reamo.schema import Mention, Result


def realign(result: Result, text: str) -> Result:
    """A copy of `result` whose mentions carry spans into `text` (None where `text` lacks them)."""

    def moved(mention: Mention) -> Mention:
        return mention.model_copy(update={"span": find_span(text, mention.text)})

    return result.model_copy(
        update={
            "text": text,
            "entities": [e.model_copy(update={"span": find_span(text, e.text)}) for e in result.entities],
            "relations": [r.model_copy(update={"head": moved(r.head), "tail": moved(r.tail)}) for r in result.relations],
            "events": [
                e.model_copy(update={
                    "trigger": moved(e.trigger),
                    "arguments": [a.model_copy(update={"entity": moved(a.entity)}) for a in e.arguments],
                })
                for e in result.events
            ],
        }
    )


def heard_share(examples: list[Example], results: list[Result]) -> tuple[int, int]:
    """(gold entity / trigger mentions whose text occurs in what the agent heard, all of them).

    The agent reads a transcript, so a mention Whisper got wrong cannot be found at all: this share is the
    ceiling on exact-match recall the ASR leaves, which tells a low speech score's cause (ASR or extraction).
    """
    heard = total = 0
    for example, result in zip(examples, results, strict=True):
        context = result.context.casefold()
        mentions = [e.text for e in example.gold.entities] + [e.trigger.text for e in example.gold.events]
        total += len(mentions)
        heard += sum(1 for text in mentions if text.casefold() in context)
    return heard, total


class SpeechPredictor:
    """Speaks each example (cached WAVs) and runs the agent on the audio alone."""

    def __init__(self, agent: Any, spec: Any, cache_dir: str | os.PathLike[str], name: str = "reamo-speech") -> None:
        self.agent = agent
        self.spec = spec
        self.cache_dir = Path(cache_dir)
        self.name = name

    def __call__(self, example: Example) -> Result:
        from reamo.tuning.speech import speech_clips

        from reamo.eval.runner import given_pair, snap_to_pair

        clip = speech_clips([example], cache_dir=self.cache_dir)[0]
        pair = given_pair(example) if self.spec.given_pairs else None
        result = self.agent.extract(audio=clip.path, tasks=self.spec.tasks, labels=self.spec.labels,
                                    pairs=[(pair[0].text, pair[1].text)] if pair else None)
        if self.spec.relation_aliases:
            for relation in result.relations:
                relation.type = self.spec.relation_aliases.get(relation.type.strip(), relation.type)
        result = realign(result, example.text)
        if pair:
            snap_to_pair(result, *pair)
        return result
