"""Tuning data for the decisions the agent makes by candidate scoring (`reamo.decisions`), in the prompts it asks
them with: is this word a trigger, and of which event type; which role does this entity play in this event; which
relation holds between this entity pair, in this direction.

Candidates are drawn as at inference: trigger candidates from `reamo.candidates.trigger_candidates` (so the
negatives are the words the agent will actually ask about), argument candidates from the sentence's entity
mentions. M2E2 train sentences of the calibration slice (`m2e2_calibration_held_out`) are never used, and the
trigger lexicon is built from the same sentences the decisions are tuned on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence

from reamo.candidates import TriggerLexicon, tag, trigger_candidates
from reamo.datasets import (
    GMNER_ENTITY_TYPES,
    M2E2_EVENT_TYPES,
    MNRE_SHORT_RELATION_TYPES,
    Example,
)
from reamo.ontology import event_roles, is_symmetric
from reamo.prompting import argument_question, trigger_question
from reamo.schema import Argument, Event, Labels, Mention, Relation
from reamo.tuning.data import (
    BuildOptions,
    InstructionExample,
    m2e2_pool,
    make_example,
    refuse_eval_split,
    short_relations,
    vary_labels,
)

logger = logging.getLogger(__name__)


def m2e2_for_decisions(split: str = "train", root: str | None = None) -> list[Example]:
    """M2E2 sentences the event decisions may be tuned on: the split without the calibration slice."""
    refuse_eval_split(split)
    return m2e2_pool(split, root, keep_calibration_out=True)


def build_trigger_lexicon(examples: Iterable[Example], source: str = "") -> TriggerLexicon:
    """The lemmas of the gold triggers of `examples`, with their event types."""
    return TriggerLexicon.build(
        ((e.text, [(ev.trigger.span.start, ev.trigger.span.end, ev.type) for ev in e.gold.events if ev.trigger.span])
         for e in examples), source=source)


def trigger_examples(examples: Sequence[Example], split: str, lexicon: TriggerLexicon, negatives: int,
                     seed: int = 0, options: BuildOptions | None = None) -> list[InstructionExample]:
    """Every gold trigger of `examples` as a positive (its event, trigger only) and `negatives` candidates that are
    no trigger (`Events: None`), drawn from the candidates the agent would ask about in the same sentences."""
    refuse_eval_split(split)
    options = options or BuildOptions()
    rng = random.Random(f"triggers-{seed}")
    positives, pool = [], []
    for example, words in zip(examples, tag([e.text for e in examples]), strict=True):
        gold = {(ev.trigger.span.start, ev.trigger.span.end): ev for ev in example.gold.events if ev.trigger.span}
        for event in gold.values():
            positives.append((example, event.trigger.text, event))
        for candidate in trigger_candidates(words, M2E2_EVENT_TYPES, lexicon):
            span = candidate.span
            if span is not None and not any(s < span.end and span.start < e for s, e in gold):
                pool.append((example, candidate.text, None))
    chosen = positives + rng.sample(pool, min(negatives, len(pool)))
    out = []
    for number, (example, trigger, event) in enumerate(chosen):
        labels = Labels(event_types=vary_labels(M2E2_EVENT_TYPES, rng, options))
        events = [Event(type=event.type, trigger=Mention(text=trigger))] if event is not None else []
        out.append(make_example(
            id=f"{example.id}#trigger-{number}", source="m2e2", split=split, stage=4, text=example.text,
            tasks=("ee",), labels=labels, events=events, question=trigger_question(trigger), rng=rng, options=options,
        ))
    logger.info("trigger decisions: %d positives, %d of %d negative candidates", len(positives),
                len(chosen) - len(positives), len(pool))
    return out


def argument_examples(examples: Sequence[Example], split: str, negatives: int, seed: int = 0,
                      options: BuildOptions | None = None) -> list[InstructionExample]:
    """For every gold event, each entity mention of its sentence: its role (a positive) or none (one of at most
    `negatives` drawn at random), asked as the agent asks it."""
    refuse_eval_split(split)
    options = options or BuildOptions()
    rng = random.Random(f"arguments-{seed}")
    positives, pool = [], []
    for example in examples:
        for event in example.gold.events:
            roles = event_roles(event.type)
            if not roles or event.trigger.span is None:
                continue
            by_span = {(a.entity.span.start, a.entity.span.end): a.role for a in event.arguments if a.entity.span}
            for entity in example.gold.entities:
                if entity.span is None or entity.span.start <= event.trigger.span.start < entity.span.end:
                    continue
                role = by_span.get((entity.span.start, entity.span.end))
                item = (example, event, roles, entity.text, role if role in roles else None)
                (positives if item[4] else pool).append(item)
    chosen = positives + rng.sample(pool, min(negatives, len(pool)))
    out = []
    for number, (example, event, roles, mention, role) in enumerate(chosen):
        bare = Event(type=event.type, trigger=Mention(text=event.trigger.text))
        answer = bare.model_copy(update={"arguments": [Argument(role=role, entity=Mention(text=mention))]}) \
            if role else bare
        out.append(make_example(
            id=f"{example.id}#argument-{number}", source="m2e2", split=split, stage=4, text=example.text,
            tasks=("ee",), labels=Labels(event_types=list(M2E2_EVENT_TYPES)), events=[answer],
            question=argument_question(event.type, event.trigger.text, roles, mention), rng=rng, options=options,
        ))
    logger.info("argument decisions: %d roles, %d of %d no-role candidates", len(positives),
                len(chosen) - len(positives), len(pool))
    return out


def reversed_pair_examples(lines: Sequence[Example], split: str, seed: int = 0,
                           options: BuildOptions | None = None) -> list[InstructionExample]:
    """MNRE lines with a relation, asked with the pair the other way round: a directed relation does not hold
    (`Relations: None`), a symmetric one does (written in the asked order). With the given-pair lines, the model
    learns the direction full relation extraction asks it about both ways."""
    refuse_eval_split(split)
    options = options or BuildOptions()
    rng = random.Random(f"mnre-reversed-{seed}")
    out = []
    for example in lines:
        if not example.gold.relations:
            continue
        relation = short_relations(example.gold.relations)[0]
        head, tail = example.meta["tail"]["text"], example.meta["head"]["text"]
        answer = [Relation(head=Mention(text=head), type=relation.type, tail=Mention(text=tail))] \
            if is_symmetric(relation.type) else []
        labels = Labels(entity_types=list(GMNER_ENTITY_TYPES),
                        relation_types=vary_labels(MNRE_SHORT_RELATION_TYPES, rng, options))
        out.append(make_example(
            id=f"{example.id}#reversed", source="mnre", split=split, stage=4, text=example.text, tasks=("re",),
            labels=labels, relations=answer, pairs=[(head, tail)], rng=rng, options=options,
        ))
    return out
