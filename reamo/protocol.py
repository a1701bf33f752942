"""The text protocol the LLM writes: extractions and tool calls in one response.

Grammar (informal EBNF; the README has the user-facing version)::

    response    = { section | tool_call | prose } ;
    section     = header , { entity | relation | event | prose } ;      (* runs until the next header *)
    header      = line start , ( "Entities" | "Relations" | "Events" ) , ":" ;
    entity      = "(" , field , "," , field , ")" ;                       (* text, type *)
    relation    = "(" , field , "," , field , "," , field , ")" ;         (* head, relation type, tail *)
    event       = "[" , field , "|" , field , [ "|" , argument , { ";" , argument } ] , "]" ;
                                                                          (* type | trigger | role: text; ... *)
    argument    = field , ":" , field ;
    tool_call   = "<Module>" , name , "</Module>" , "<Instruction>" , instruction , "</Instruction>" ;
    instruction = field | json_object ;        (* plain text = {"target": text}; JSON = the call's arguments *)
    field       = { char | "\\" , escaped } ;  (* escaped: \\ ( ) [ ] , | ; : < > and "n" for a newline *)

Reamo's published output (``(entity, label)(entity, label)`` lists and ``<Module>..</Module><Instruction>..``
calls, no headers) is a subset: outside any section a 2-field tuple is an entity and a 3-field tuple a relation.

The parser is total: `parse` never raises on any input (unless ``strict=True``); it returns every item it could
read plus a `Problem` for each piece it could not, located by offset, line and column.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field

from reamo.errors import ProtocolError
from reamo.schema import Argument, Entity, Event, Mention, Problem, Relation, ToolCall

MODULE_NAMES = ("ImageSegmentation", "VideoTracking", "AudioSegmentation")

_SPECIAL = set("\\()[],|;:<>")
_HEADER = re.compile(r"[ \t]*(?:named[ \t]+)?(entities|relations|events)[ \t]*:", re.IGNORECASE)
_SECTION_OF = {"entities": "ner", "relations": "re", "events": "ee"}
_OPEN_MODULE, _CLOSE_MODULE = "<Module>", "</Module>"
_OPEN_INSTR, _CLOSE_INSTR = "<Instruction>", "</Instruction>"
_STRAY_TAGS = ("</Module>", "<Instruction>", "</Instruction>")


class ParsedOutput(BaseModel):
    """What `parse` read from one response; entities carry no spans yet (alignment to the input comes later)."""

    entities: list[Entity] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    problems: list[Problem] = Field(default_factory=list)

    def content(self) -> dict[str, Any]:
        """Everything but the problems, for comparisons (serialize -> parse identity)."""
        return self.model_dump(exclude={"problems"})


# ---------------------------------------------------------------------------------------------------------------
# Serializing
# ---------------------------------------------------------------------------------------------------------------


def escape(text: str, extra: str = "") -> str:
    """Escape protocol punctuation in a field so that any text survives a round trip."""
    out = []
    for char in text:
        if char == "\n":
            out.append("\\n")
        elif char in _SPECIAL and (char != ":" or ":" in extra):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def format_entity(text: str, type_: str) -> str:
    return f"({escape(text)}, {escape(type_)})"


def format_relation(head: str, type_: str, tail: str) -> str:
    return f"{format_relation_start(head, type_)} {escape(tail)})"


def format_relation_start(head: str, type_: str) -> str:
    """A relation as written up to its type: the part of the answer that differs between relations of one pair."""
    return f"({escape(head)}, {escape(type_)},"


def format_event_start(type_: str) -> str:
    """An event as written up to its type: the part of a trigger's answer that differs between event types."""
    return f"[{escape(type_)} |"


def format_event(event: Event) -> str:
    parts = [escape(event.type), escape(event.trigger.text)]
    if event.arguments:
        parts.append("; ".join(f"{escape(a.role, extra=':')}: {escape(a.entity.text)}" for a in event.arguments))
    return "[" + " | ".join(parts) + "]"


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    target = arguments.get("target")
    if set(arguments) == {"target"} and isinstance(target, str) and target.strip() == target and target:
        if not target.startswith("{"):
            instruction = escape(target)
        else:
            instruction = _json_instruction(arguments)
    else:
        instruction = _json_instruction(arguments)
    return f"{_OPEN_MODULE}{name}{_CLOSE_MODULE}{_OPEN_INSTR}{instruction}{_CLOSE_INSTR}"


def _json_instruction(arguments: dict[str, Any]) -> str:
    # "<" as \u003c keeps a JSON string from closing the tag early; still valid JSON.
    return json.dumps(arguments, ensure_ascii=False).replace("<", "\\u003c")


def serialize(
    entities: list[Entity] | None = None,
    relations: list[Relation] | None = None,
    events: list[Event] | None = None,
    tool_calls: list[ToolCall] | None = None,
    sections: tuple[str, ...] = ("ner", "re", "ee"),
) -> str:
    """Write extractions and tool calls in the protocol; `sections` says which headers to write even when empty."""
    lines: list[str] = []
    if "ner" in sections or entities:
        body = "".join(format_entity(e.text, e.type) for e in entities or [])
        lines.append(f"Entities: {body or 'None'}")
    if "re" in sections or relations:
        body = "".join(format_relation(r.head.text, r.type, r.tail.text) for r in relations or [])
        lines.append(f"Relations: {body or 'None'}")
    if "ee" in sections or events:
        body = "".join(format_event(e) for e in events or [])
        lines.append(f"Events: {body or 'None'}")
    for call in tool_calls or []:
        lines.append(format_tool_call(call.name, call.arguments))
    return "\n".join(lines)


def serialize_parsed(parsed: ParsedOutput, sections: tuple[str, ...] = ("ner", "re", "ee")) -> str:
    return serialize(parsed.entities, parsed.relations, parsed.events, parsed.tool_calls, sections)


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------


class _Scanner:
    """One pass over the response; collects items and located problems."""

    def __init__(self, text: str, strict: bool) -> None:
        self.text = text
        self.strict = strict
        self.out = ParsedOutput()
        self.section: str | None = None

    # -- problems ------------------------------------------------------------------------------------------------
    def locate(self, position: int) -> tuple[int, int]:
        line = self.text.count("\n", 0, position) + 1
        column = position - (self.text.rfind("\n", 0, position) + 1) + 1
        return line, column

    def problem(self, message: str, position: int, end: int | None = None) -> None:
        line, column = self.locate(position)
        if self.strict:
            raise ProtocolError(message, position, line, column)
        snippet = self.text[position : (end if end is not None else position + 40)][:80]
        self.out.problems.append(
            Problem(message=message, position=position, line=line, column=column, snippet=snippet)
        )

    # -- fields --------------------------------------------------------------------------------------------------
    def read_fields(self, start: int, close: str, separators: str) -> tuple[list[str], list[str], int] | None:
        """Read escaped fields from just after an opening bracket up to the matching `close`.

        Returns (fields, separators seen, index after the closing bracket), or None when the bracket is not
        closed on its line (a truncated or broken item).
        """
        opener = {")": "(", "]": "["}[close]
        fields: list[str] = []
        seps: list[str] = []
        current: list[str] = []
        depth = 0
        i = start
        text = self.text
        while i < len(text):
            char = text[i]
            if char == "\\" and i + 1 < len(text):
                nxt = text[i + 1]
                current.append("\n" if nxt == "n" else nxt)
                i += 2
                continue
            if char == "\n":
                return None
            if char == opener:
                depth += 1
            elif char == close:
                if depth == 0:
                    fields.append("".join(current))
                    return fields, seps, i + 1
                depth -= 1
            elif char in separators and depth == 0:
                fields.append("".join(current))
                seps.append(char)
                current = []
                i += 1
                continue
            current.append(char)
            i += 1
        return None

    # -- items ---------------------------------------------------------------------------------------------------
    def parse_tuple(self, i: int) -> int:
        read = self.read_fields(i + 1, ")", ",")
        if read is None:
            if self.section is not None:
                self.problem("unterminated '(': tuple not closed before the end of the line", i)
            return i + 1
        fields, _, end = read
        fields = [f.strip() for f in fields]
        if self.section is None and len(fields) < 2:
            return end  # prose in parentheses outside any section
        if any(not f for f in fields):
            self.problem(f"empty field in tuple ({', '.join(fields)})", i, end)
            return end
        section = self.section or ("ner" if len(fields) == 2 else "re" if len(fields) == 3 else None)
        if section == "ner":
            if len(fields) < 2:
                self.problem("entity needs 2 fields (text, type), got 1", i, end)
                return end
            if len(fields) > 2:
                self.problem(
                    f"entity has {len(fields)} fields; read the last as its type (escape commas in text as \\,)",
                    i,
                    end,
                )
            self.out.entities.append(Entity(text=", ".join(fields[:-1]), type=fields[-1]))
        elif section == "re":
            if len(fields) != 3:
                self.problem(f"relation needs 3 fields (head, type, tail), got {len(fields)}", i, end)
                return end
            head, rel, tail = fields
            self.out.relations.append(Relation(head=Mention(text=head), type=rel, tail=Mention(text=tail)))
        elif section == "ee":
            self.problem("events are written in brackets: [type | trigger | role: text; ...]", i, end)
        else:
            self.problem(f"tuple with {len(fields)} fields outside a section is neither entity nor relation", i, end)
        return end

    def parse_event(self, i: int) -> int:
        read = self.read_fields(i + 1, "]", "|")
        if read is None:
            if self.section == "ee":
                self.problem("unterminated '[': event not closed before the end of the line", i)
            return i + 1
        fields, _, end = read
        if len(fields) < 2:
            if self.section == "ee":
                self.problem("event needs at least [type | trigger]", i, end)
            return end
        if self.section not in (None, "ee"):
            return end
        if len(fields) > 3:
            self.problem(f"event has {len(fields)} '|'-separated fields, expected at most 3", i, end)
            return end
        etype, trigger = fields[0].strip(), fields[1].strip()
        if not etype or not trigger:
            self.problem("event type or trigger is empty", i, end)
            return end
        arguments: list[Argument] = []
        if len(fields) == 3 and fields[2].strip():
            for raw in _split_unescaped(self.text[i + 1 : end - 1], "|")[2:3]:
                for arg in _split_unescaped(raw, ";"):
                    role_text = _split_unescaped(arg, ":", maxsplit=1)
                    if len(role_text) != 2:
                        self.problem(f"event argument without 'role: text': {_unescape(arg).strip()!r}", i, end)
                        continue
                    role, text = _unescape(role_text[0]).strip(), _unescape(role_text[1]).strip()
                    if not role or not text:
                        self.problem(f"event argument with an empty role or text: {_unescape(arg).strip()!r}", i, end)
                        continue
                    arguments.append(Argument(role=role, entity=Mention(text=text)))
        self.out.events.append(Event(type=etype, trigger=Mention(text=trigger), arguments=arguments))
        return end

    def parse_tool_call(self, i: int) -> int:
        text = self.text
        name_start = i + len(_OPEN_MODULE)
        close = text.find(_CLOSE_MODULE, name_start)
        next_open = text.find(_OPEN_MODULE, name_start)
        if close < 0 or (0 <= next_open < close):
            self.problem("unterminated <Module>: no </Module>", i)
            return name_start
        name = text[name_start:close].strip()
        after = close + len(_CLOSE_MODULE)
        instr = re.compile(r"\s*" + re.escape(_OPEN_INSTR)).match(text, after)
        if not name:
            self.problem("empty module name in <Module></Module>", i, after)
            return after
        if instr is None:
            self.problem(f"tool call {name} has no <Instruction> after </Module>", i, after)
            return after
        body_start = instr.end()
        end = _find_unescaped(text, _CLOSE_INSTR, body_start)
        following = text.find(_OPEN_MODULE, body_start)
        if end < 0 or (0 <= following < end):
            self.problem(f"unterminated <Instruction> in tool call {name}", i)
            return body_start
        raw = text[body_start:end].strip()
        arguments = self.read_instruction(raw, name, i, end)
        if arguments is not None:
            call = ToolCall(id=f"call_{len(self.out.tool_calls)}", name=name, arguments=arguments)
            self.out.tool_calls.append(call)
        return end + len(_CLOSE_INSTR)

    def read_instruction(self, raw: str, name: str, i: int, end: int) -> dict[str, Any] | None:
        if raw.startswith("{"):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as err:
                self.problem(f"instruction of {name} looks like JSON but does not parse: {err.msg}", i, end)
                return None
            if not isinstance(value, dict):
                self.problem(f"instruction of {name} must be a JSON object", i, end)
                return None
            return value
        target = _unescape(raw).strip()
        if not target:
            self.problem(f"empty instruction in tool call {name}", i, end)
            return None
        return {"target": target}

    # -- driver --------------------------------------------------------------------------------------------------
    def run(self) -> ParsedOutput:
        text = self.text
        i = 0
        line_start = True
        while i < len(text):
            if line_start:
                header = _HEADER.match(text, i)
                if header:
                    self.section = _SECTION_OF[header.group(1).lower()]
                    i = header.end()
                    line_start = False
                    continue
            char = text[i]
            if char == "\n":
                line_start = True
                i += 1
                continue
            line_start = False
            if text.startswith(_OPEN_MODULE, i):
                i = self.parse_tool_call(i)
            elif char == "(":
                i = self.parse_tuple(i)
            elif char == "[":
                i = self.parse_event(i)
            elif char == "<" and any(text.startswith(tag, i) for tag in _STRAY_TAGS):
                tag = next(t for t in _STRAY_TAGS if text.startswith(t, i))
                self.problem(f"stray {tag} outside a tool call", i, i + len(tag))
                i += len(tag)
            elif char == "\\":
                i += 2
            else:
                i += 1
        return self.out


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append("\n" if text[i + 1] == "n" else text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _split_unescaped(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split raw (still escaped) text on `sep` where it is not escaped and not inside brackets."""
    parts, current, depth, i = [], [], 0, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if char in "([":
            depth += 1
        elif char in ")]" and depth > 0:
            depth -= 1
        if char == sep and depth == 0 and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _find_unescaped(text: str, needle: str, start: int) -> int:
    i = start
    while True:
        found = text.find(needle, i)
        if found < 0:
            return -1
        backslashes = 0
        j = found - 1
        while j >= start and text[j] == "\\":
            backslashes += 1
            j -= 1
        if backslashes % 2 == 0:
            return found
        i = found + 1


def parse(text: str, strict: bool = False) -> ParsedOutput:
    """Read extractions and tool calls from model output.

    Never raises on malformed input unless `strict`; then the first problem raises `ProtocolError` with its position.
    """
    return _Scanner(text, strict).run()
