"""Export the knowledge graph: RDF (Turtle, JSON-LD via rdflib) and Neo4j (a .cypher script, or Bolt).

RDF mapping (vocabulary `https://w3id.org/reamo/kg#`, prefix `reamo:`; node IRIs `https://w3id.org/reamo/kg/id/
<Table>/<url-quoted id>`): every node gets `rdf:type reamo:<Table>`, `reamo:id` and one literal per non-null
property (entities: `rdfs:label` = name); MENTION_OF -> `reamo:mentionOf`, IN_DOC -> `reamo:inDocument`,
TRIGGER -> `reamo:trigger`. Relations and roles carry properties, so each is also a node (reified: `reamo:Relation`
with `reamo:head` / `reamo:tail` / `reamo:relationType` / `reamo:document` ...; `reamo:Role` with `reamo:event` /
`reamo:entity` / `reamo:role`) besides a direct triple (`head reamorel:<type slug> tail`, `event reamo:hasArgument
entity`) for simple SPARQL. Entity embeddings are not exported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from reamo.files import write_atomic
from reamo.errors import ConfigError, MissingDependencyError
from reamo.kg.store import NODE_TABLES, REL_TABLES, GraphStore

logger = logging.getLogger(__name__)

VOCAB = "https://w3id.org/reamo/kg#"
ID_BASE = "https://w3id.org/reamo/kg/id/"
REL_BASE = "https://w3id.org/reamo/kg/rel/"
SKIP_PROPERTIES = frozenset({"embedding"})
FORMATS = ("ttl", "jsonld", "cypher")


# ---------------------------------------------------------------------------------------------------------------
# Dump
# ---------------------------------------------------------------------------------------------------------------


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_") and k not in SKIP_PROPERTIES and v is not None}


def dump_graph(store: GraphStore) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """All nodes per table (property dicts) and all edges per rel table ({"src", "dst", **properties})."""
    nodes = {table: [_clean(r["n"]) for r in store.execute(f"MATCH (n:{table}) RETURN n ORDER BY n.id")]
             for table in NODE_TABLES}
    edges = {}
    for rel in REL_TABLES:
        rows = store.execute(f"MATCH (a)-[r:{rel}]->(b) RETURN a.id AS src, b.id AS dst, r ORDER BY src, dst")
        edges[rel] = [{"src": r["src"], "dst": r["dst"], **_clean(r["r"])} for r in rows]
    return nodes, edges


# ---------------------------------------------------------------------------------------------------------------
# RDF
# ---------------------------------------------------------------------------------------------------------------


def _rdflib() -> Any:
    try:
        import rdflib
    except ImportError as error:
        raise MissingDependencyError("RDF export needs rdflib: pip install 'rdflib>=7,<8'") from error
    return rdflib


def node_iri(table: str, node_id: str) -> str:
    return f"{ID_BASE}{table}/{quote(node_id, safe='')}"


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, default=str).encode("utf-8")).hexdigest()[:20]


def relation_slug(relation_type: str) -> str:
    """A predicate-safe local name for a relation type ("/per/org/member_of" -> "per_org_member_of"); the exact type
    stays in `reamo:relationType` of the reified relation."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", relation_type).strip("_") or "related"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


REL_ENDPOINTS = {"MENTION_OF": ("Mention", "Entity"), "IN_DOC": ("Mention", "Document"),
                 "RELATION": ("Entity", "Entity"), "ROLE": ("Event", "Entity"), "TRIGGER": ("Event", "Mention")}


def to_rdf(db_dir: str | os.PathLike[str]) -> Any:
    """The graph as an `rdflib.Graph` (see the module docstring for the mapping)."""
    rdflib = _rdflib()
    from rdflib import RDF, RDFS, XSD, Literal, Namespace, URIRef

    reamo = Namespace(VOCAB)
    graph = rdflib.Graph()
    graph.bind("reamo", reamo)
    graph.bind("reamorel", Namespace(REL_BASE))
    with GraphStore(db_dir, read_only=True) as store:
        nodes, edges = dump_graph(store)

    def literal(value: Any) -> Literal:
        if isinstance(value, bool):
            return Literal(value, datatype=XSD.boolean)
        if isinstance(value, int):
            return Literal(value, datatype=XSD.integer)
        if isinstance(value, float):
            return Literal(value if math.isfinite(value) else str(value), datatype=XSD.double)
        return Literal(value if isinstance(value, str) else json.dumps(value))

    for table, records in nodes.items():
        for record in records:
            subject = URIRef(node_iri(table, record["id"]))
            graph.add((subject, RDF.type, reamo[table]))
            for key, value in record.items():
                predicate = RDFS.label if (table == "Entity" and key == "name") else reamo[_camel(key)]
                graph.add((subject, predicate, literal(value)))

    simple = {"MENTION_OF": reamo.mentionOf, "IN_DOC": reamo.inDocument, "TRIGGER": reamo.trigger}
    for rel, records in edges.items():
        src_table, dst_table = REL_ENDPOINTS[rel]
        for record in records:
            src = URIRef(node_iri(src_table, record["src"]))
            dst = URIRef(node_iri(dst_table, record["dst"]))
            if rel in simple:
                graph.add((src, simple[rel], dst))
                continue
            props = {k: v for k, v in record.items() if k not in ("src", "dst")}
            if rel == "RELATION":
                node = URIRef(f"{ID_BASE}Relation/{_digest(record['src'], props, record['dst'])}")
                graph.add((src, URIRef(REL_BASE + relation_slug(props.get("type", "related"))), dst))
                graph.add((node, RDF.type, reamo.Relation))
                graph.add((node, reamo.head, src))
                graph.add((node, reamo.tail, dst))
                for key, value in props.items():
                    name = {"type": "relationType"}.get(key, _camel(key))
                    if key == "document":
                        graph.add((node, reamo.document, URIRef(node_iri("Document", value))))
                    elif key in ("head_mention", "tail_mention"):
                        graph.add((node, reamo[name], URIRef(node_iri("Mention", value))))
                    else:
                        graph.add((node, reamo[name], literal(value)))
            else:  # ROLE
                node = URIRef(f"{ID_BASE}Role/{_digest(record['src'], props, record['dst'])}")
                graph.add((src, reamo.hasArgument, dst))
                graph.add((node, RDF.type, reamo.Role))
                graph.add((node, reamo.event, src))
                graph.add((node, reamo.entity, dst))
                graph.add((node, reamo.role, literal(props.get("role", ""))))
                if props.get("mention"):
                    graph.add((node, reamo.mention, URIRef(node_iri("Mention", props["mention"]))))
    return graph


def export_rdf(db_dir: str | os.PathLike[str], path: str | os.PathLike[str], fmt: str = "ttl") -> int:
    """Write Turtle ("ttl") or JSON-LD ("jsonld") atomically; returns the number of triples."""
    graph = to_rdf(db_dir)
    rdf_format = {"ttl": "turtle", "turtle": "turtle", "jsonld": "json-ld", "json-ld": "json-ld"}.get(fmt)
    if rdf_format is None:
        raise ConfigError(f"unknown RDF format {fmt!r}; use ttl or jsonld")
    kwargs: dict[str, Any] = {"context": {"reamo": VOCAB, "reamorel": REL_BASE}, "indent": 1} \
        if rdf_format == "json-ld" else {}
    write_atomic(Path(path), graph.serialize(format=rdf_format, **kwargs))
    return len(graph)


# ---------------------------------------------------------------------------------------------------------------
# Neo4j
# ---------------------------------------------------------------------------------------------------------------


def cypher_literal(value: Any) -> str:
    """A Cypher literal for a property value (strings single-quoted with backslash escapes)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(cypher_literal(v) for v in value) + "]"
    text = str(value)
    escaped = (text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f"'{escaped}'"


def _map(props: dict[str, Any]) -> str:
    return "{" + ", ".join(f"`{k}`: {cypher_literal(v)}" for k, v in props.items()) + "}"


# the properties that identify an edge (MERGE key), the rest is SET
EDGE_KEYS = {"RELATION": ("type", "document"), "ROLE": ("role", "mention")}


def cypher_statements(db_dir: str | os.PathLike[str]) -> Iterator[str]:
    """Idempotent Neo4j Cypher (MERGE on ids) that rebuilds the graph: constraints, nodes, then edges."""
    with GraphStore(db_dir, read_only=True) as store:
        nodes, edges = dump_graph(store)
    for table in NODE_TABLES:
        yield f"CREATE CONSTRAINT reamo_{table.lower()}_id IF NOT EXISTS FOR (n:{table}) REQUIRE n.id IS UNIQUE;"
    for table, records in nodes.items():
        for record in records:
            props = {k: v for k, v in record.items() if k != "id"}
            yield f"MERGE (n:{table} {{id: {cypher_literal(record['id'])}}}) SET n += {_map(props)};"
    for rel, records in edges.items():
        src_table, dst_table = REL_ENDPOINTS[rel]
        for record in records:
            props = {k: v for k, v in record.items() if k not in ("src", "dst")}
            key = {k: props.pop(k) for k in EDGE_KEYS.get(rel, ()) if k in props}
            tail = f" SET r += {_map(props)}" if props else ""
            yield (f"MATCH (a:{src_table} {{id: {cypher_literal(record['src'])}}}), "
                   f"(b:{dst_table} {{id: {cypher_literal(record['dst'])}}}) "
                   f"MERGE (a)-[r:{rel} {_map(key)}]->(b){tail};")


def export_cypher(db_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> int:
    """Write a .cypher script (one statement per line, for `cypher-shell -f`); returns the number of statements."""
    lines = list(cypher_statements(db_dir))
    write_atomic(Path(path), "\n".join(lines) + "\n")
    return len(lines)


def export_neo4j(db_dir: str | os.PathLike[str], url: str, user: str = "neo4j", password: str | None = None,
                 database: str | None = None, batch_size: int = 500) -> int:
    """Push the graph to a running Neo4j over Bolt (e.g. bolt://localhost:7687); returns statements run."""
    try:
        import neo4j  # type: ignore[import-not-found]
    except ImportError as error:
        raise MissingDependencyError(
            "exporting to a Neo4j server needs its Bolt driver: pip install 'neo4j>=5,<7' "
            "(or export a .cypher file with `reamo kg export --format cypher` and run it with cypher-shell)"
        ) from error
    statements = list(cypher_statements(db_dir))
    auth = (user, password) if password is not None else None
    with neo4j.GraphDatabase.driver(url, auth=auth) as driver, driver.session(database=database) as session:
        for start in range(0, len(statements), batch_size):
            chunk = statements[start : start + batch_size]

            def work(tx: Any, chunk: list[str] = chunk) -> None:
                for statement in chunk:
                    tx.run(statement.rstrip(";"))

            session.execute_write(work)
    logger.info("pushed %d statements to %s", len(statements), url)
    return len(statements)


def export(db_dir: str | os.PathLike[str], fmt: str, path: str | os.PathLike[str] | None = None,
           url: str | None = None, **neo4j_options: Any) -> int:
    """One entry for the CLI: `fmt` in ttl | jsonld | cypher; with `url`, cypher goes to Neo4j over Bolt."""
    if fmt == "cypher" and url:
        return export_neo4j(db_dir, url, **neo4j_options)
    if path is None:
        path = Path(db_dir) / f"graph.{fmt}"
    if fmt == "cypher":
        return export_cypher(db_dir, path)
    if fmt in ("ttl", "jsonld", "turtle", "json-ld"):
        return export_rdf(db_dir, path, fmt)
    raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
