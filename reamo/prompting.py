"""Builds the chat messages for an extraction: instructions, label sets, few-shot turns and the user's input.

The messages are plain HF / OpenAI-style dicts; the model's chat template (chat_templates/) turns them into its
prompt text, so the same messages serve Vicuna, LLaVA-style and ChatML models alike.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from reamo.errors import ConfigError
from reamo.schema import Labels, Task

DEFAULT_ENTITY_TYPES = ["PER", "ORG", "LOC", "OTHER"]
DEFAULT_RELATION_TYPES = [
    "couple", "parent", "siblings", "peer", "member_of", "part_of", "located_in", "place_of_birth",
    "place_of_residence", "nationality", "present_in", "awarded", "contain", "subsidiary", "alternate_names",
]
# The event types the default model was tuned and measured on (M2E2's eight ACE types): with them, trigger candidates
# come from the tuning lexicon and the trigger head decides; a type outside them (pass it in `labels`) makes every
# verb and noun a candidate, decided by rank classification.
DEFAULT_EVENT_TYPES = [
    "Conflict:Attack", "Movement:Transport", "Life:Die", "Justice:Arrest-Jail", "Contact:Meet",
    "Conflict:Demonstrate", "Contact:Phone-Write", "Transaction:Transfer-Money",
]
MODULE_FOR_MODALITY = {"image": "ImageSegmentation", "video": "VideoTracking", "audio": "AudioSegmentation"}

# Short worked examples in the protocol; the tiny default LLM follows the format far better with them.
FEW_SHOT: list[dict[str, Any]] = [
    {
        "text": "Lionel Messi signed with Inter Miami in Florida.",
        "media": ["image"],
        "ner": "(Lionel Messi, PER)(Inter Miami, ORG)(Florida, LOC)",
        "re": "(Lionel Messi, member_of, Inter Miami)(Inter Miami, located_in, Florida)",
        "ee": "None",
        "targets": ["Lionel Messi"],
    },
    {
        "text": "Police arrested two protesters in Paris on Monday.",
        "media": [],
        "ner": "(Paris, LOC)",
        "re": "None",
        "ee": "[Justice:Arrest-Jail | arrested | Agent: Police; Person: protesters; Place: Paris]",
        "targets": [],
    },
]


_LABEL_FORMS = (
    "a Labels record, a dict with entity_types / relation_types / event_types, a list or tuple of entity types "
    "such as ['PER', 'ORG'], or a comma-separated string such as 'PER,ORG'"
)


def _label_list(value: Any, what: str) -> list[str]:
    """A list/tuple of non-empty strings or a comma-separated string -> stripped names; anything else: ConfigError."""
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"{what} cannot be a {type(value).__name__} ({value!r}); give {_LABEL_FORMS}")
    bad = [item for item in items if not isinstance(item, str) or not item.strip()]
    if bad:
        raise ConfigError(
            f"{what} must be non-empty strings, got {bad[0]!r} ({type(bad[0]).__name__}) in {value!r}; "
            f"give {_LABEL_FORMS}"
        )
    return [item.strip() for item in items]


def resolve_labels(labels: Labels | dict[str, Any] | list[str] | tuple[str, ...] | str | None) -> Labels:
    """Accept a Labels record, a dict of its fields, a list/tuple of entity types or a comma-separated string of
    them ("PER,ORG"); fill defaults. Anything else raises ConfigError naming what was given and the accepted forms."""
    if labels is None:
        labels = Labels()
    elif isinstance(labels, (list, tuple, str)):
        labels = Labels(entity_types=_label_list(labels, "labels"))
    elif isinstance(labels, dict):
        fields = list(Labels.model_fields)
        unknown = [key for key in labels if key not in fields]
        if unknown:
            raise ConfigError(f"labels: unknown key(s) {unknown}; a labels dict takes {', '.join(fields)}")
        labels = Labels(**{key: _roles(value) if key == "event_roles" else _label_list(value, f"labels[{key!r}]")
                           for key, value in labels.items()})
    elif not isinstance(labels, Labels):
        raise ConfigError(f"labels cannot be a {type(labels).__name__} ({labels!r}); give {_LABEL_FORMS}")
    return Labels(
        entity_types=labels.entity_types or DEFAULT_ENTITY_TYPES,
        relation_types=labels.relation_types or DEFAULT_RELATION_TYPES,
        event_types=labels.event_types or DEFAULT_EVENT_TYPES,
        event_roles=labels.event_roles,
    )


def _roles(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ConfigError(f"labels['event_roles'] must be a dict of event type -> roles, got {type(value).__name__}")
    return {str(event_type): _label_list(roles, f"labels['event_roles'][{event_type!r}]")
            for event_type, roles in value.items()}


EntityPair = tuple[str, str]


class Question(BaseModel):
    """One decision asked about the input, answered by scoring candidate answers (rank classification): the line
    that narrows the instructions to it, and the line that names the candidate in the user turn."""

    model_config = ConfigDict(extra="forbid")

    instruction: str
    candidate: str


def trigger_question(trigger: str) -> Question:
    """Does `trigger` (a word of the text) trigger one of the listed event types? Answers: `Events: [type | word]`
    for each type, or `Events: None`."""
    return Question(
        instruction="Events only for the given trigger candidate: the event it triggers, or None if it triggers no "
                    "listed event.",
        candidate=f"Trigger candidate: {trigger}",
    )


def argument_question(event_type: str, trigger: str, roles: list[str], mention: str) -> Question:
    """Which role does `mention` play in the event? Answers: the event with `role: mention` for each of `roles`,
    or the event alone (no role)."""
    return Question(
        instruction=f"Events only for the given event: write it with the role the given argument candidate plays in "
                    f"it ({', '.join(roles)}), or the event alone if it plays none of them.",
        candidate=f"Event: [{event_type} | {trigger}]\nArgument candidate: {mention}",
    )


def system_prompt(tasks: tuple[Task, ...], labels: Labels, pairs: bool = False, media: bool = True,
                  question: Question | None = None) -> str:
    """The instructions: one format line per task with its labels; the tool-call line only when media are given
    (a text-only prompt has nothing to ground, and a shorter prompt is cheaper to tune and to run)."""
    lines = ["Extract information from the user's input and answer only in this format, one line each:"]
    if "ner" in tasks:
        lines.append(f"Entities: (text, type)(text, type) with types {', '.join(labels.entity_types)}")
    if "re" in tasks:
        lines.append(f"Relations: (head, relation, tail) with relations {', '.join(labels.relation_types)}")
        if pairs:
            lines.append("Relations only between the given entity pairs (head first); None if no listed relation holds.")
    if "ee" in tasks:
        lines.append(f"Events: [event type | trigger | role: argument; role: argument] with types {', '.join(labels.event_types)}")
    if question is not None:
        lines.append(question.instruction)
    lines.append("Write None for an empty list. Copy entity text exactly from the input.")
    if media:
        lines.append(
            "For each entity that appears in an attached image, video or audio, add one line "
            "<Module>ImageSegmentation</Module><Instruction>entity text</Instruction> "
            "(VideoTracking for video, AudioSegmentation for audio)."
        )
    return "\n".join(lines)


def pairs_line(pairs: list[EntityPair]) -> str:
    """The given entity pairs (relation classification, as MNRE is scored): `Entity pairs: (head; tail)...`."""
    return "Entity pairs: " + "".join(f"({head}; {tail})" for head, tail in pairs)


def user_content(text: str, context: str, placeholders: list[str],
                 pairs: list[EntityPair] | None = None,
                 question: Question | None = None) -> str | list[dict[str, str]]:
    """The user turn: media placeholders (for encoded media), tool-made context, the text, then any given pairs
    or the candidate a decision is about."""
    body = text.strip()
    if context:
        body = f"{context}\nText: {body}" if body else context
    else:
        body = f"Text: {body}"
    if pairs:
        body = f"{body}\n{pairs_line(pairs)}"
    if question is not None:
        body = f"{body}\n{question.candidate}"
    if not placeholders:
        return body
    return [{"type": modality} for modality in placeholders] + [{"type": "text", "text": body}]


def assistant_answer(example: dict[str, Any], tasks: tuple[Task, ...]) -> str:
    header = {"ner": "Entities", "re": "Relations", "ee": "Events"}
    lines = [f"{header[t]}: {example[t]}" for t in tasks]
    for modality in example["media"]:
        for target in example["targets"]:
            lines.append(f"<Module>{MODULE_FOR_MODALITY[modality]}</Module><Instruction>{target}</Instruction>")
    return "\n".join(lines)


def build_messages(
    text: str,
    context: str,
    tasks: tuple[Task, ...],
    labels: Labels,
    placeholders: list[str] | None = None,
    few_shot: bool = True,
    modalities: list[str] | None = None,
    pairs: list[EntityPair] | None = None,
    question: Question | None = None,
) -> list[dict[str, Any]]:
    """System instructions, few-shot turns (their media markers in words), then the user's input.

    `pairs`: entity pairs given by the caller (relation classification); the model then labels only those.
    `question`: one candidate decision (`trigger_question`, `argument_question`) the answer is scored for.
    """
    pairs = list(pairs or []) if "re" in tasks else []
    has_media = bool(placeholders or modalities)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt(tasks, labels, bool(pairs), media=has_media or few_shot,
                                                    question=question)}
    ]
    if few_shot:
        for example in FEW_SHOT:
            media_note = "".join(f"[{m} attached] " for m in example["media"])
            messages.append({"role": "user", "content": f"{media_note}Text: {example['text']}"})
            messages.append({"role": "assistant", "content": assistant_answer(example, tasks)})
    content = user_content(text, context, placeholders or [], pairs, question)
    media_note = "".join(f"[{m} attached] " for m in (modalities or []))
    if isinstance(content, str):
        content = media_note + content
    messages.append({"role": "user", "content": content})
    return messages
