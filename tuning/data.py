"""Instruction data for the four tuning stages, built from the real datasets in one jsonlines format.

Every example is a chat (system / user / assistant) built with `reamo.prompting.build_messages`, the function
the agent uses at inference (few_shot=False), so a tuned model sees in training exactly the prompt it will see
when used. The assistant target is written with `reamo.protocol.serialize`, so it parses back into the gold.

Variation that teaches the model to follow the prompt rather than memorise one ontology:

* the label set offered is sometimes shuffled or a random subset; the target keeps only items of offered labels
  (so a subset that excludes every gold type gives "Entities: None" — a "no entity" case);
* the first line of the system prompt is sometimes paraphrased (most examples keep the inference wording);
* sentences without any gold item of a task give "None" targets (M2E2 sentences without events, MNRE sentences
  whose pairs are all "None").

Builders take the split explicitly and never pick one themselves; the trainer refuses dev splits.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reamo.datasets import (
    GMNER_ENTITY_TYPES,
    M2E2_ENTITY_TYPES,
    M2E2_EVENT_TYPES,
    MNRE_SHORT_NAMES,
    MNRE_SHORT_RELATION_TYPES,
    Example,
    group_mnre,
    m2e2_calibration_held_out,
    read_gmner,
    read_m2e2,
    read_mnre_for_tuning,
    write_jsonl,
)
from reamo.errors import ConfigError
from reamo.prompting import MODULE_FOR_MODALITY, Question, build_messages
from reamo.protocol import serialize
from reamo.schema import Entity, Event, ImageRegion, Labels, Relation, ToolCall

logger = logging.getLogger(__name__)

MODALITY_ORDER = ("image", "video", "audio")  # the agent's order for placeholders and context lines
# Paraphrases of the system prompt's first line; the rest (format lines, label lists) is never changed.
INSTRUCTION_VARIANTS = [
    "Extract information from the user's input and answer only in this format, one line each:",  # inference wording
    "Read the user's input and list what it mentions, strictly in this format, one line each:",
    "Find the requested items in the input. Reply only with these lines:",
    "You are an information extraction system. Output exactly these lines:",
    "Identify the entities, relations and events asked for below; answer in this format only:",
]
EVAL_SPLITS = frozenset({"dev", "val", "valid", "validation", "test"})


class InstructionExample(BaseModel):
    """One training chat: messages ending with the assistant target, the media they refer to, provenance."""

    model_config = ConfigDict(extra="forbid")

    id: str
    messages: list[dict[str, Any]] = Field(description="system / user / assistant chat; the last is the target")
    media: dict[str, str] = Field(default_factory=dict, description="modality -> file path or dataset reference")
    task: list[str] = Field(default_factory=list, description="tasks in the prompt: ner, re, ee, caption")
    source: str
    split: str
    stage: int = Field(ge=1, le=4)

    @property
    def target(self) -> str:
        return str(self.messages[-1]["content"])


class BuildOptions(BaseModel):
    """How much the builders vary prompts; probabilities in [0, 1]."""

    model_config = ConfigDict(extra="forbid")

    shuffle_labels_prob: float = Field(default=0.25, ge=0, le=1)
    subset_labels_prob: float = Field(default=0.25, ge=0, le=1)
    paraphrase_prob: float = Field(default=0.3, ge=0, le=1)
    encoded: list[str] = Field(
        default_factory=list,
        description="modalities the target model encodes (placeholders); others become text context",
    )


def refuse_eval_split(split: str, what: str = "training data") -> None:
    """Dev / validation / test data are for evaluation only: never train on them."""
    if split.lower() in EVAL_SPLITS:
        raise ConfigError(
            f"refusing to build {what} from the {split!r} split: dev/val/test are for evaluation only; "
            "use split: train"
        )


# ---------------------------------------------------------------------------------------------------------------
# The shared example maker
# ---------------------------------------------------------------------------------------------------------------


def vary_labels(labels: Sequence[str], rng: random.Random, options: BuildOptions) -> list[str]:
    """The label list to offer: canonical order, shuffled, or a random non-empty subset (shuffled)."""
    offered = list(labels)
    draw = rng.random()
    if draw < options.subset_labels_prob and len(offered) > 1:
        offered = rng.sample(offered, rng.randint(1, len(offered) - 1))
    elif draw < options.subset_labels_prob + options.shuffle_labels_prob:
        rng.shuffle(offered)
    return offered


def _span_start(item: Any) -> int:
    span = getattr(item, "span", None) or getattr(getattr(item, "trigger", None), "span", None)
    if span is None and hasattr(item, "head"):
        span = item.head.span
    return span.start if span is not None else 1 << 30


def make_example(
    *,
    id: str,
    source: str,
    split: str,
    stage: int,
    text: str,
    tasks: Sequence[str],
    labels: Labels,
    entities: Sequence[Entity] = (),
    relations: Sequence[Relation] = (),
    events: Sequence[Event] = (),
    grounded: dict[str, Sequence[str]] | None = None,
    contexts: dict[str, str] | None = None,
    media: dict[str, str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    question: Question | None = None,
    rng: random.Random,
    options: BuildOptions,
) -> InstructionExample:
    """Prompt exactly as the agent builds it + the gold target filtered to the offered labels.

    `grounded[modality]` lists the entity texts whose evidence is in that modality: each becomes one tool call
    (ImageSegmentation / VideoTracking / AudioSegmentation) if the entity survives the label filter.
    `contexts[modality]` is the tool-made text the default model reads for a modality it does not encode.
    """
    refuse_eval_split(split)
    media = dict(media or {})
    contexts = contexts or {}
    given = [m for m in MODALITY_ORDER if m in media]
    placeholders = [m for m in given if m in options.encoded]
    context = "\n".join(contexts[m] for m in given if m not in options.encoded and contexts.get(m))
    task_tuple = tuple(t for t in ("ner", "re", "ee") if t in tasks)
    messages = build_messages(text, context, task_tuple, labels, placeholders, False, given,  # type: ignore[arg-type]
                              list(pairs or []), question)
    if options.paraphrase_prob and rng.random() < options.paraphrase_prob:
        first, _, rest = messages[0]["content"].partition("\n")
        messages[0]["content"] = rng.choice(INSTRUCTION_VARIANTS[1:]) + "\n" + rest

    kept_entities = sorted((e for e in entities if e.type in labels.entity_types), key=_span_start)
    kept_relations = sorted((r for r in relations if r.type in labels.relation_types), key=_span_start)
    kept_events = sorted((e for e in events if e.type in labels.event_types), key=_span_start)
    mentioned = {e.text for e in kept_entities} if "ner" in task_tuple else set()
    if "re" in task_tuple:
        mentioned |= {m.text for r in kept_relations for m in (r.head, r.tail)}
    if "ee" in task_tuple:
        mentioned |= {a.entity.text for e in kept_events for a in e.arguments}
    calls: list[ToolCall] = []
    for modality in given:
        seen: set[str] = set()
        for target in (grounded or {}).get(modality, ()):
            if target in mentioned and target not in seen:
                seen.add(target)
                calls.append(ToolCall(id=f"call_{len(calls)}", name=MODULE_FOR_MODALITY[modality],
                                      arguments={"target": target}))
    answer = serialize(
        kept_entities if "ner" in task_tuple else None,
        kept_relations if "re" in task_tuple else None,
        kept_events if "ee" in task_tuple else None,
        calls,
        sections=task_tuple,
    )
    messages.append({"role": "assistant", "content": answer})
    return InstructionExample(id=id, messages=messages, media=media, task=list(task_tuple), source=source,
                              split=split, stage=stage)


# ---------------------------------------------------------------------------------------------------------------
# Stage 1 (UIE) and stage 3 (grounding) builders, one per dataset
# ---------------------------------------------------------------------------------------------------------------


def gmner_boxed(example: Example) -> list[str]:
    """Entity texts with at least one gold box: the ones an ImageSegmentation call should target."""
    return [e.text for e in example.gold.entities if any(isinstance(g, ImageRegion) for g in e.groundings)]


def gmner_examples(
    examples: Iterable[Example], split: str, stage: int = 1, seed: int = 0, options: BuildOptions | None = None
) -> list[InstructionExample]:
    """GMNER tweets -> NER (PER/ORG/LOC/OTHER). Stage 3: the tweet image is attached and entities with gold
    boxes get ImageSegmentation calls; stage 1 is text only."""
    from reamo.tuning.contexts import gmner_image_context

    refuse_eval_split(split)
    options = options or BuildOptions()
    rng = random.Random(f"gmner-{seed}-{stage}")
    out = []
    for example in examples:
        labels = Labels(entity_types=vary_labels(GMNER_ENTITY_TYPES, rng, options))
        with_image = stage >= 3 and example.image is not None
        out.append(make_example(
            id=f"{example.id}#s{stage}", source="gmner", split=split, stage=stage, text=example.text,
            tasks=("ner",), labels=labels, entities=example.gold.entities,
            grounded={"image": gmner_boxed(example)} if with_image else None,
            contexts={"image": gmner_image_context(example, rng)} if with_image else None,
            media={"image": example.image} if with_image else None,  # type: ignore[dict-item]
            rng=rng, options=options,
        ))
    return out


def short_relations(relations: Sequence[Relation]) -> list[Relation]:
    """MNRE relations with the short label names prompts use (`reamo.datasets.MNRE_SHORT_NAMES`)."""
    return [r.model_copy(update={"type": MNRE_SHORT_NAMES.get(r.type, r.type)}) for r in relations]


def mnre_examples(
    examples: Iterable[Example], split: str, stage: int = 1, seed: int = 0, options: BuildOptions | None = None
) -> list[InstructionExample]:
    """MNRE sentences -> RE over the MNRE relation labels (short names, "member_of"; the scorer maps them back);
    sentences whose pairs are all "None" give "Relations: None"."""
    refuse_eval_split(split)
    options = options or BuildOptions()
    rng = random.Random(f"mnre-{seed}-{stage}")
    out = []
    for example in group_mnre(examples):
        labels = Labels(entity_types=list(GMNER_ENTITY_TYPES),
                        relation_types=vary_labels(MNRE_SHORT_RELATION_TYPES, rng, options))
        out.append(make_example(
            id=f"{example.id}#s{stage}", source="mnre", split=split, stage=stage, text=example.text, tasks=("re",),
            labels=labels, relations=short_relations(example.gold.relations), rng=rng, options=options,
        ))
    return out


def mnre_pair_examples(
    examples: Iterable[Example], split: str, stage: int = 1, seed: int = 0, options: BuildOptions | None = None,
) -> list[InstructionExample]:
    """MNRE lines -> relation classification given the entity pair (how MNRE is scored): the prompt names the
    pair, the target is its one relation or "Relations: None"."""
    refuse_eval_split(split)
    options = options or BuildOptions()
    rng = random.Random(f"mnre-pairs-{seed}-{stage}")
    out = []
    for example in examples:
        head, tail = example.meta["head"]["text"], example.meta["tail"]["text"]
        labels = Labels(entity_types=list(GMNER_ENTITY_TYPES),
                        relation_types=vary_labels(MNRE_SHORT_RELATION_TYPES, rng, options))
        out.append(make_example(
            id=f"{example.id}#pair-s{stage}", source="mnre", split=split, stage=stage, text=example.text,
            tasks=("re",), labels=labels, relations=short_relations(example.gold.relations), pairs=[(head, tail)], rng=rng,
            options=options,
        ))
    return out


def balance(examples: Sequence[Example], limit: int, none_fraction: float, rng: random.Random,
            has_item: Callable[[Example], bool]) -> list[Example]:
    """At most `limit` examples, about `none_fraction` of them without the item (`has_item` false)."""
    with_item = [e for e in examples if has_item(e)]
    without = [e for e in examples if not has_item(e)]
    n_none = min(len(without), round(limit * none_fraction))
    picked = rng.sample(with_item, min(len(with_item), limit - n_none)) + rng.sample(without, n_none)
    rng.shuffle(picked)
    return picked


def balance_relations(examples: Sequence[Example], limit: int, none_fraction: float, seed: int) -> list[Example]:
    """At most `limit` MNRE lines (entity pairs), about `none_fraction` of them "None" (62% of MNRE train is)."""
    return balance(examples, limit, none_fraction, random.Random(f"mnre-balance-{seed}"),
                   lambda e: bool(e.gold.relations))


def m2e2_examples(
    examples: Iterable[Example], split: str, stage: int = 1, seed: int = 0, options: BuildOptions | None = None,
    ner_only_prob: float = 0.15, ee_only_prob: float = 0.15,
) -> list[InstructionExample]:
    """M2E2 sentences -> EE with their entity mentions (ACE types); some examples ask for NER or EE alone."""
    refuse_eval_split(split)
    options = options or BuildOptions()
    rng = random.Random(f"m2e2-{seed}-{stage}")
    out = []
    for example in examples:
        draw = rng.random()
        tasks = ("ner",) if draw < ner_only_prob else ("ee",) if draw < ner_only_prob + ee_only_prob else ("ner", "ee")
        labels = Labels(entity_types=vary_labels(M2E2_ENTITY_TYPES, rng, options),
                        event_types=vary_labels(M2E2_EVENT_TYPES, rng, options))
        out.append(make_example(
            id=f"{example.id}#s{stage}", source="m2e2", split=split, stage=stage, text=example.text, tasks=tasks,
            labels=labels, entities=example.gold.entities, events=example.gold.events, rng=rng, options=options,
        ))
    return out


def m2e2_pool(split: str, root: str | os.PathLike[str] | None, keep_calibration_out: bool) -> list[Example]:
    """The M2E2 sentences of `split` a recipe may draw from: all, or all but the event calibration slice."""
    sentences = read_m2e2(split, root=root)
    return [e for e in sentences if not m2e2_calibration_held_out(e)] if keep_calibration_out else sentences


def balance_m2e2(examples: Sequence[Example], limit: int, none_fraction: float, seed: int) -> list[Example]:
    """At most `limit` M2E2 sentences, about `none_fraction` of them without events (most sentences have none)."""
    return balance(examples, limit, none_fraction, random.Random(f"m2e2-balance-{seed}"),
                   lambda e: bool(e.gold.events))


def sample(examples: Sequence[Example], limit: int | None, seed: int, name: str) -> list[Example]:
    if limit is None or limit >= len(examples):
        return list(examples)
    return random.Random(f"{name}-{seed}").sample(list(examples), limit)


def uie_examples(
    split: str, counts: dict[str, int], seed: int = 0, stage: int = 1, options: BuildOptions | None = None,
    root: str | os.PathLike[str] | None = None, mnre_none_fraction: float = 0.4, m2e2_none_fraction: float = 0.3,
    keep_calibration_out: bool = False,
) -> list[InstructionExample]:
    """The stage 1 / stage 3 mix from the datasets: counts = {"gmner": n, "mnre": n, "m2e2": n} (0 = none).

    Optional counts: "gmner_text" (GMNER NER without the image, whatever the stage: the text-only task as scored),
    "mnre_pairs" (relation classification given the pair), with `mnre_none_fraction` of them "None" pairs;
    `m2e2_none_fraction` of the M2E2 sentences have no event; `keep_calibration_out` draws none of the M2E2
    sentences kept for calibrating the event decisions.
    """
    refuse_eval_split(split)
    out: list[InstructionExample] = []
    if counts.get("gmner") or counts.get("gmner_text"):
        tweets = read_gmner(split, root=root)
        picked = sample(tweets, counts.get("gmner", 0) + counts.get("gmner_text", 0), seed, "gmner")
        n_grounded = counts.get("gmner", 0)
        if n_grounded:
            out += gmner_examples(picked[:n_grounded], split, stage, seed, options)
        if counts.get("gmner_text"):  # distinct tweets from the grounded ones
            out += gmner_examples(picked[n_grounded:], split, 1, seed, options)
    if counts.get("mnre"):
        sentences = group_mnre(read_mnre_for_tuning(split, root=root))
        out += mnre_examples(sample(sentences, counts["mnre"], seed, "mnre"), split, stage, seed, options)
    if counts.get("mnre_pairs"):
        lines = balance_relations(read_mnre_for_tuning(split, root=root), counts["mnre_pairs"], mnre_none_fraction, seed)
        out += mnre_pair_examples(lines, split, stage, seed, options)
    if counts.get("m2e2"):
        pool = m2e2_pool(split, root, keep_calibration_out)
        out += m2e2_examples(balance_m2e2(pool, counts["m2e2"], m2e2_none_fraction, seed), split, stage, seed, options)
    random.Random(f"mix-{seed}-{stage}").shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# jsonlines
# ---------------------------------------------------------------------------------------------------------------


def write_instructions(examples: Iterable[InstructionExample], path: str | os.PathLike[str]) -> int:
    """One InstructionExample JSON per line, written atomically; returns the count."""
    return write_jsonl(examples, path)


def read_instructions(path: str | os.PathLike[str]) -> list[InstructionExample]:
    """Examples written by `write_instructions`; a bad line raises ConfigError naming file:line."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise ConfigError(f"instruction file not found: {source}; write it with reamo.tuning.data.write_instructions")
    out = []
    with source.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                out.append(InstructionExample.model_validate(json.loads(line)))
            except (ValueError, ValidationError) as error:
                raise ConfigError(f"{source}:{number}: not an InstructionExample: {str(error).splitlines()[0]}") from error
    return out
