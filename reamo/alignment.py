"""Links what the model wrote back to the input: text mentions to character spans, tool results to entities.

The model writes entity *text*; scoring, highlighting and the knowledge graph need offsets. Text the input does
not contain is kept (span None) and reported, never silently dropped or forced onto a wrong span.
"""

from __future__ import annotations

import re

from reamo.protocol import ParsedOutput
from reamo.schema import (
    Box,
    Entity,
    Event,
    ImageRegion,
    Mention,
    NoRegion,
    Problem,
    Relation,
    TextSpan,
    ToolResult,
    Track,
)


def normalize(text: str) -> str:
    """Case- and space-insensitive key used to match targets to entities."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def _whole_words(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] neither starts nor ends inside a word: "Jerami" in "@ WithrowJerami Hey Jerami" is
    the second one, "BU" is not the middle of "SBU" (tweets glue names into handles and hashtags)."""
    starts_clean = start == 0 or not (text[start - 1].isalnum() and text[start].isalnum())
    ends_clean = end == len(text) or not (text[end - 1].isalnum() and text[end].isalnum())
    return starts_clean and ends_clean


def find_span(text: str, needle: str, taken: set[tuple[int, int]] | None = None) -> TextSpan | None:
    """Where `needle` occurs in `text`, exactly or up to case and spacing: the first whole-word occurrence not
    already in `taken` preferred, then a whole-word one taken (a repeated mention), then one inside a word; the exact
    one first at each step ("Chile" is "# chile", not the start of "Chilean")."""
    if not needle or not text:
        return None
    taken = taken or set()
    exact: set[tuple[int, int]] = set()
    start = text.find(needle)
    while start >= 0:
        exact.add((start, start + len(needle)))
        start = text.find(needle, start + 1)
    free_whole = [c for c in exact if c not in taken and _whole_words(text, *c)]
    if free_whole:  # the best rank there is, so the case-insensitive search (the costly part) is not needed
        start, end = min(free_whole)
        return TextSpan(start=start, end=end)
    words = [re.escape(w) for w in needle.split()]
    loose = {(m.start(), m.end()) for m in re.finditer(r"\s+".join(words), text, re.IGNORECASE)} if words else set()
    candidates = exact | loose
    if not candidates:
        return None
    start, end = min(candidates, key=lambda c: (not _whole_words(text, *c), c in taken, c not in exact, c))
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


def _region_boxes(grounding: object) -> dict[int, Box]:
    """Frame index -> box of an image region (frame 0) or of a track; {} for anything else."""
    if isinstance(grounding, ImageRegion):
        return {0: grounding.box}
    if isinstance(grounding, Track):
        return {frame.frame_index: frame.box for frame in grounding.frames}
    return {}


def _same_region(a: object, b: object, min_iou: float) -> bool:
    boxes_a, boxes_b = _region_boxes(a), _region_boxes(b)
    common = set(boxes_a) & set(boxes_b)
    return bool(common) and sum(boxes_a[i].iou(boxes_b[i]) for i in common) / len(common) >= min_iou


def drop_shared_regions(results: list[ToolResult], min_iou: float = 0.7) -> list[Problem]:
    """Two different targets grounded to the same region by a detector (not by text read in the image) cannot
    both be right, and nothing tells which one is: both become "no region", with the reason. (Two names "tracked"
    to one face in the foliage was a confident wrong answer, worse than none.)"""
    problems: list[Problem] = []
    found = [(r, g) for r in results if r.ok and r.target for g in r.groundings if _region_boxes(g)]
    shared: dict[int, set[str]] = {}
    for i, (first, region) in enumerate(found):
        for second, other in found[i + 1:]:
            if normalize(first.target or "") == normalize(second.target or "") or first.name != second.name:
                continue
            if "ocr" in (region.source + other.source).lower():
                continue  # a name read in the image is evidence for its own region
            if _same_region(region, other, min_iou):
                shared.setdefault(id(first), set()).add(second.target or "")
                shared.setdefault(id(second), set()).add(first.target or "")
    for result in results:
        others = shared.get(id(result))
        if not others:
            continue
        modality = "video" if any(isinstance(g, Track) for g in result.groundings) else "image"
        reason = (f"the same region was the best match for {result.target!r} and {', '.join(map(repr, sorted(others)))}"
                  "; the detector cannot tell whose it is")
        result.groundings = [NoRegion(modality=modality, reason=reason, source=result.name)]
        problems.append(Problem(stage="dispatch", message=f"{result.name}: {reason}"))
    return problems
