"""Links what the model wrote back to the input: text mentions to character spans, tool results to entities.

The model writes entity *text*; scoring, highlighting and the knowledge graph need offsets. Text the input does
not contain is kept (span None) and reported, never silently dropped or forced onto a wrong span.
"""

from __future__ import annotations

import re

from reamo.protocol import ParsedOutput
from reamo.schema import Entity, Event, Mention, NoRegion, Problem, Relation, TextSpan, ToolResult


def normalize(text: str) -> str:
    """Case- and space-insensitive key used to match targets to entities."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def find_span(text: str, needle: str, taken: set[tuple[int, int]] | None = None) -> TextSpan | None:
    """First occurrence of `needle` in `text` (exact, then case/space-insensitive) not already in `taken`."""
    if not needle or not text:
        return None
    taken = taken or set()
    candidates: list[tuple[int, int]] = []
    start = text.find(needle)
    while start >= 0:
        candidates.append((start, start + len(needle)))
        start = text.find(needle, start + 1)
    if not candidates:
        words = [re.escape(w) for w in needle.split()]
        pattern = re.compile(r"\s+".join(words), re.IGNORECASE)
        candidates = [(m.start(), m.end()) for m in pattern.finditer(text)]
    if not candidates:
        return None
    free = [c for c in candidates if c not in taken]
    start, end = (free or candidates)[0]
    return TextSpan(start=start, end=end)


def _mention(text: str, mention: Mention, problems: list[Problem], what: str) -> Mention:
    span = find_span(text, mention.text)
    if span is None and text:
        problems.append(Problem(message=f"{what} {mention.text!r} does not occur in the input text", stage="align"))
    return Mention(text=mention.text, span=span)


def align(
    text: str, parsed: ParsedOutput, keep_unaligned: bool = False
) -> tuple[list[Entity], list[Relation], list[Event], list[Problem]]:
    """Give every extracted mention its character span in `text`; duplicate entities are merged.

    With text given and `keep_unaligned` False, items naming text the input does not contain (hallucinations,
    text copied from few-shot examples) are dropped and reported as problems.
    """
    problems: list[Problem] = []
    entities: list[Entity] = []
    taken: set[tuple[int, int]] = set()
    seen: set[tuple[str, str, int | None]] = set()
    for entity in parsed.entities:
        span = find_span(text, entity.text, taken)
        if span is None and text:
            problems.append(Problem(message=f"entity {entity.text!r} does not occur in the input text", stage="align"))
        key = (normalize(entity.text), entity.type, span.start if span else None)
        if key in seen:
            continue
        seen.add(key)
        if span is not None:
            taken.add((span.start, span.end))
        entities.append(Entity(text=entity.text, type=entity.type, span=span))
    relations = [
        Relation(
            head=_mention(text, r.head, problems, "relation head"),
            type=r.type,
            tail=_mention(text, r.tail, problems, "relation tail"),
        )
        for r in parsed.relations
    ]
    events = [
        Event(
            type=e.type,
            trigger=_mention(text, e.trigger, problems, "event trigger"),
            arguments=[
                a.model_copy(update={"entity": _mention(text, a.entity, problems, f"{a.role} argument")})
                for a in e.arguments
            ],
        )
        for e in parsed.events
    ]
    if text and not keep_unaligned:
        entities = [e for e in entities if e.span is not None]
        relations = [r for r in relations if r.head.span is not None and r.tail.span is not None]
        events = [
            e.model_copy(update={"arguments": [a for a in e.arguments if a.entity.span is not None]})
            for e in events
            if e.trigger.span is not None
        ]
    return entities, relations, events, problems


def attach_groundings(entities: list[Entity], results: list[ToolResult]) -> list[Problem]:
    """Add each successful result's groundings to the entities its target names (matched by `normalize`)."""
    problems: list[Problem] = []
    index: dict[str, list[int]] = {}
    for i, entity in enumerate(entities):
        index.setdefault(normalize(entity.text), []).append(i)
    for result in results:
        if not result.ok or result.target is None:
            continue
        matched = index.get(normalize(result.target), [])
        result.matched_entities = list(matched)
        if not matched:
            problems.append(
                Problem(message=f"{result.name} target {result.target!r} matches no extracted entity", stage="dispatch")
            )
            continue
        for i in matched:
            for grounding in result.groundings:
                modality = grounding.modality if isinstance(grounding, NoRegion) else grounding.kind
                existing = entities[i].grounding(modality)  # type: ignore[arg-type]
                if existing is not None and isinstance(existing, NoRegion) and not isinstance(grounding, NoRegion):
                    entities[i].groundings.remove(existing)
                elif existing is not None:
                    continue  # first grounding per modality wins; duplicates from repeated calls are dropped
                entities[i].groundings.append(grounding)
    return problems
