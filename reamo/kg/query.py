"""Ask the knowledge graph: raw Cypher, canned questions about one entity, and its neighbourhood for drawing.

An entity argument may be an entity id ("rafael nadal|PER") or a name ("Rafael Nadal's"): a name matches every
entity with the same normalized key, whatever its type.
"""

from __future__ import annotations

import json
import os
from typing import Any

from reamo.errors import QueryError
from reamo.kg.resolve import normalize_name
from reamo.kg.store import GraphStore

_INTERNAL = ("_ID", "_SRC", "_DST")


def _plain(value: Any) -> Any:
    """Engine values -> JSON-friendly Python (nodes/rels lose their internal ids, keep `_LABEL`)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in _INTERNAL}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def query(db_dir: str | os.PathLike[str], cypher: str, params: dict[str, Any] | None = None,
          read_only: bool = True) -> list[dict[str, Any]]:
    """Run one Cypher statement on the graph in `db_dir`; rows as dicts (column name -> value).

    Read-only (the default) also refuses statements that touch files or the network (QueryRefusedError); Cypher
    the engine rejects raises QueryError with its message."""
    with GraphStore(db_dir, read_only=read_only) as store:
        try:
            return [_plain(row) for row in store.execute(cypher, params)]
        except RuntimeError as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise QueryError(f"the graph database rejected the query: {message}") from error


def print_rows(rows: list[dict[str, Any]], title: str | None = None, console: Any = None, max_width: int = 60) -> None:
    """Print rows as a rich table (nested values as compact JSON, long cells cut)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    columns = list(rows[0]) if rows else []
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(str(column), overflow="fold")
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            text = "" if value is None else value if isinstance(value, str) else json.dumps(value, default=str)
            cells.append(text if len(text) <= max_width else text[: max_width - 1] + "…")
        table.add_row(*cells)
    console.print(table)
    console.print(f"{len(rows)} row(s)")


def find_entities(store: GraphStore, entity: str) -> list[str]:
    """Entity ids for an id or a name (all types with the same normalized key)."""
    if store.execute("MATCH (e:Entity {id: $id}) RETURN e.id AS id", {"id": entity}):
        return [entity]
    key = normalize_name(entity.rpartition("|")[0] if "|" in entity else entity)
    return [r["id"] for r in store.execute("MATCH (e:Entity {key: $k}) RETURN e.id AS id ORDER BY id", {"k": key})]


def where_is(db_dir: str | os.PathLike[str], entity: str, include_none: bool = False) -> list[dict[str, Any]]:
    """Every place the entity was found: text spans per document, image boxes, video tracks, audio time spans.
    Explicit "not in this modality" answers (kind "none") are left out unless `include_none`."""
    with GraphStore(db_dir, read_only=True) as store:
        ids = find_entities(store, entity)
        rows = store.execute(
            "MATCH (d:Document)<-[:IN_DOC]-(m:Mention)-[:MENTION_OF]->(e:Entity) WHERE e.id IN $ids "
            "AND ($with_none OR m.kind <> 'none') "
            "RETURN e.id AS entity, d.id AS document, m.modality AS modality, m.kind AS kind, m.text AS text, "
            "m.char_start AS char_start, m.char_end AS char_end, m.x1 AS x1, m.y1 AS y1, m.x2 AS x2, m.y2 AS y2, "
            "m.audio_start AS start_s, m.audio_end AS end_s, m.score AS score, m.source AS source, "
            "m.reason AS reason, d.media AS media, m.id AS mention ORDER BY document, mention",
            {"ids": ids, "with_none": include_none},
        )
    for row in rows:
        row["media"] = json.loads(row["media"]) if row["media"] else {}
        if row["x1"] is not None:
            row["box"] = [row["x1"], row["y1"], row["x2"], row["y2"]]
        for column in ("x1", "y1", "x2", "y2"):
            row.pop(column)
    return rows


def _number(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.2f}"


def _where(row: dict[str, Any]) -> str:
    """One mention's place in a few words: its characters, box, track or time span."""
    kind = row["kind"]
    if kind == "text":
        span = f"chars {row['char_start']}-{row['char_end']}" if row["char_start"] is not None else "no span"
        text = row["text"] or ""
        return f'{span} "{text if len(text) <= 24 else text[:23] + "…"}"'
    if kind == "none":
        return "looked, not found" + (f": {row['reason']}" if row.get("reason") else "")
    parts = []
    if row.get("box"):
        parts.append("box " + ",".join(_number(v) for v in row["box"]))
    if row["start_s"] is not None:
        parts.append(f"{row['start_s']:.2f}-{row['end_s']:.2f} s")
    return " ".join(parts) or kind


def where_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`where_is` rows cut to five columns (document, modality, where, score, source) so an 80-column terminal
    shows them readably; the entity id leads when a name matched several. `--json` prints every field."""
    several = len({row["entity"] for row in rows}) > 1
    table = []
    for row in rows:
        score = row["score"]
        table.append({**({"entity": row["entity"]} if several else {}), "document": row["document"],
                      "modality": row["modality"] if row["kind"] != "none" else f"{row['modality']} (none)",
                      "where": _where(row), "score": "" if score is None else f"{score:.2f}",
                      "source": row["source"] or ""})
    return table


def relations_of(db_dir: str | os.PathLike[str], entity: str) -> list[dict[str, Any]]:
    """Relations with the entity as head or tail: (head, type, tail, document)."""
    with GraphStore(db_dir, read_only=True) as store:
        ids = find_entities(store, entity)
        return store.execute(
            "MATCH (h:Entity)-[r:RELATION]->(t:Entity) WHERE h.id IN $ids OR t.id IN $ids "
            "RETURN h.id AS head, r.type AS relation, t.id AS tail, r.document AS document, r.score AS score "
            "ORDER BY document, head, relation, tail",
            {"ids": ids},
        )


def events_of(db_dir: str | os.PathLike[str], entity: str) -> list[dict[str, Any]]:
    """Events the entity takes part in: event type, its role, the trigger text, the document."""
    with GraphStore(db_dir, read_only=True) as store:
        ids = find_entities(store, entity)
        return store.execute(
            "MATCH (m:Mention)<-[:TRIGGER]-(ev:Event)-[r:ROLE]->(e:Entity) WHERE e.id IN $ids "
            "RETURN ev.id AS event, ev.type AS type, r.role AS role, e.id AS entity, m.text AS trigger, "
            "ev.document AS document ORDER BY document, event, role",
            {"ids": ids},
        )


CANNED = {"where_is": where_is, "relations_of": relations_of, "events_of": events_of}


# ---------------------------------------------------------------------------------------------------------------
# Neighbourhood (UI hook)
# ---------------------------------------------------------------------------------------------------------------


def neighbourhood(db_dir: str | os.PathLike[str], entity: str, depth: int = 1, max_mentions: int = 12
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nodes and edges around an entity, for drawing.

    Entities within `depth` hops (a relation is one hop; entity -> event -> entity through roles is one hop too),
    the events linking them, and the grounded mentions (image/video/audio first, then text; at most
    `max_mentions`) of the starting entities with their documents. Node: {id, label, name, type, ...}; edge:
    {source, target, label}.
    """
    nodes: dict[str, dict[str, Any]] = {}
    edges: dict[tuple[str, str, str], dict[str, Any]] = {}

    def add_edge(source: str, target: str, label: str) -> None:
        edges.setdefault((source, target, label), {"source": source, "target": target, "label": label})

    with GraphStore(db_dir, read_only=True) as store:
        start = find_entities(store, entity)
        frontier = set(start)
        seen = set(start)
        for _ in range(max(0, depth)):
            if not frontier:
                break
            ids = sorted(frontier)
            found: set[str] = set()
            for row in store.execute(
                "MATCH (h:Entity)-[r:RELATION]->(t:Entity) WHERE h.id IN $ids OR t.id IN $ids "
                "RETURN DISTINCT h.id AS h, r.type AS type, t.id AS t", {"ids": ids}):
                add_edge(row["h"], row["t"], row["type"])
                found |= {row["h"], row["t"]}
            for row in store.execute(
                "MATCH (ev:Event)-[r:ROLE]->(e:Entity) WHERE e.id IN $ids "
                "MATCH (ev)-[r2:ROLE]->(o:Entity) RETURN DISTINCT ev.id AS ev, ev.type AS type, r2.role AS role, "
                "o.id AS o", {"ids": ids}):
                nodes.setdefault(row["ev"], {"id": row["ev"], "label": "Event", "name": row["type"],
                                             "type": row["type"]})
                add_edge(row["ev"], row["o"], row["role"])
                found.add(row["o"])
            frontier = found - seen
            seen |= found
        for row in store.execute("MATCH (e:Entity) WHERE e.id IN $ids RETURN e.id AS id, e.name AS name, "
                                 "e.type AS type", {"ids": sorted(seen)}):
            nodes[row["id"]] = {"id": row["id"], "label": "Entity", "name": row["name"], "type": row["type"]}
        mentions = store.execute(
            "MATCH (d:Document)<-[:IN_DOC]-(m:Mention)-[:MENTION_OF]->(e:Entity) WHERE e.id IN $ids "
            "AND m.kind <> 'none' RETURN e.id AS entity, m.id AS id, m.kind AS kind, m.text AS text, m.x1 AS x1, "
            "m.y1 AS y1, m.x2 AS x2, m.y2 AS y2, m.audio_start AS start_s, m.audio_end AS end_s, "
            "d.id AS document, d.media AS media ORDER BY (m.kind = 'text'), m.id LIMIT $n",
            {"ids": start, "n": max_mentions})
    for row in mentions:
        media = json.loads(row.pop("media") or "{}")
        box = [row.pop(k) for k in ("x1", "y1", "x2", "y2")]
        node = {"label": "Mention", "name": row["text"], "type": row["kind"], "document": row["document"], **row}
        if box[0] is not None:
            node["box"] = box
        if row["kind"] in media:
            node["media_path"] = media[row["kind"]]
        nodes[row["id"]] = node
        nodes.setdefault(row["document"], {"id": row["document"], "label": "Document", "name": row["document"],
                                           "type": "document"})
        add_edge(row["id"], row["entity"], "MENTION_OF")
        add_edge(row["id"], row["document"], "IN_DOC")
    first = [nodes[i] for i in start if i in nodes]  # the asked-for entities lead, so callers can centre them
    return first + [n for n in nodes.values() if n["id"] not in start], list(edges.values())
