"""Keeps only the types the request asked for.

The prompt lists the entity, relation and event types to use; a small model sometimes writes another one (on a
garbled speech transcript it can split an entity line at the wrong comma and turn half the entity text into its
"type"). Such items cannot be right for the request, so they are dropped and reported as problems, with the fix
for a caller who does want that type. Matching ignores case and spacing; kept items take the requested spelling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from reamo.alignment import normalize
from reamo.schema import Entity, Event, Labels, Problem, Relation

Typed = TypeVar("Typed", Entity, Relation, Event)


def _canonical(types: Sequence[str]) -> dict[str, str]:
    return {normalize(t): t for t in types}


def _dropped(kind: str, item: str, type_: str, allowed: Sequence[str], field: str) -> Problem:
    return Problem(
        stage="align",
        message=f"dropped {kind} {item}: type {type_!r} is not one of the requested {kind} types "
                f"({', '.join(allowed)}); add it to labels.{field} to keep such {kind}s",
    )


def keep_requested_labels(
    entities: list[Entity], relations: list[Relation], events: list[Event], labels: Labels
) -> tuple[list[Entity], list[Relation], list[Event], list[Problem]]:
    """The entities, relations and events whose type is in `labels` (an empty type list allows any type), and a
    problem for each one dropped."""
    problems: list[Problem] = []

    def keep(items: list[Typed], types: list[str], kind: str, field: str,
             describe: Callable[[Typed], str]) -> list[Typed]:
        if not types:
            return items
        allowed = _canonical(types)
        kept: list[Typed] = []
        for item in items:
            canonical = allowed.get(normalize(item.type))
            if canonical is None:
                problems.append(_dropped(kind, describe(item), item.type, types, field))
                continue
            kept.append(item.model_copy(update={"type": canonical}))
        return kept

    entities = keep(entities, labels.entity_types, "entity", "entity_types", lambda e: repr(e.text))
    relations = keep(relations, labels.relation_types, "relation", "relation_types",
                     lambda r: f"({r.head.text!r}, {r.tail.text!r})")
    events = keep(events, labels.event_types, "event", "event_types", lambda e: f"triggered by {e.trigger.text!r}")
    return entities, relations, events, problems
