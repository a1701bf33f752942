"""resolve_labels: every way a user passes labels either works or says which forms are accepted (issue 27)."""

from __future__ import annotations

import pytest

from reamo.errors import ConfigError
from reamo.prompting import DEFAULT_ENTITY_TYPES, DEFAULT_RELATION_TYPES, resolve_labels
from reamo.schema import Labels


@pytest.mark.parametrize(
    ("given", "entity_types"),
    [
        ("PER", ["PER"]),
        ("PER,ORG", ["PER", "ORG"]),
        (" PER , ORG ", ["PER", "ORG"]),
        (["PER", "LOC"], ["PER", "LOC"]),
        (("PER", "LOC"), ["PER", "LOC"]),
        ({"entity_types": "PER,ORG"}, ["PER", "ORG"]),
        ({"entity_types": ["ORG"], "relation_types": ["member_of"]}, ["ORG"]),
        (Labels(entity_types=["LOC"]), ["LOC"]),
        (None, DEFAULT_ENTITY_TYPES),
        ([], DEFAULT_ENTITY_TYPES),
    ],
)
def test_accepted_label_forms(given: object, entity_types: list[str]) -> None:
    resolved = resolve_labels(given)  # type: ignore[arg-type]
    assert resolved.entity_types == entity_types
    assert resolved.relation_types  # defaults filled in
    if isinstance(given, dict) and "relation_types" in given:
        assert resolved.relation_types == ["member_of"]
    else:
        assert resolved.relation_types == DEFAULT_RELATION_TYPES


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (123, "int"),
        (1.5, "float"),
        ({"PER"}, "set"),
        (["PER", 3], "int"),
        (["PER", ""], "str"),
        (["PER", "   "], "str"),
        ("PER,,ORG", "str"),
        ({"entity_types": 7}, "int"),
        ({"entity": ["PER"]}, "unknown key"),
    ],
)
def test_rejected_label_forms_name_the_type_and_the_accepted_forms(given: object, named: str) -> None:
    """Issue 27: labels=123 was an AttributeError deep inside the agent."""
    with pytest.raises(ConfigError) as caught:
        resolve_labels(given)  # type: ignore[arg-type]
    message = str(caught.value)
    assert named in message, message
    if named != "unknown key":
        assert "comma-separated string such as 'PER,ORG'" in message and "list or tuple" in message
    else:
        assert "entity_types, relation_types, event_types" in message
