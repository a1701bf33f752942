"""Load extraction Results into the knowledge graph, batch by batch, idempotently and resumably.

Why it is safe to run twice or to kill: every node and edge is written with MERGE on a key derived from the input
(document id, char span, entity key + type, ...), each batch is one transaction, and only after a batch commits are
its document ids (+ a hash of their Result) appended to `ingest_log.jsonl` in the db folder. A re-run skips logged
documents whose Result is unchanged, replaces those whose Result changed, and re-writes (harmlessly) a batch that
committed but was not logged because the process died in between.

Ids: document = the input id; text mention = ``doc#t<start>-<end>`` (``doc#t?<key>`` when the model named text
without a span); a grounding of it = ``<text mention>|<TYPE>/g<k>`` (k = index in `Entity.groundings`); entity =
``normalized name|TYPE`` (see `reamo.kg.resolve`); event = ``doc#e<trigger span>|<event type>``.
Relation heads/tails and event arguments are linked to the Result's entity with the same span (else the same
normalized text); a mention that matches none becomes an entity of the generic type ENTITY.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from reamo.kg.resolve import (
    DEFAULT_EMBEDDING_THRESHOLD,
    EmbeddingMerger,
    collapse_generic,
    normalize_name,
    normalize_type,
)
from reamo.kg.store import INGEST_LOG, GraphStore
from reamo.schema import Entity, ImageRegion, Mention, NoRegion, Result, TimeSpan, Track

logger = logging.getLogger(__name__)

GENERIC_ARGUMENT_TYPE = "ENTITY"

# column -> Cypher type of Mention properties (typed CASTs: a column that is NULL in every row of a batch would
# otherwise be bound as STRING)
MENTION_COLUMNS: dict[str, str] = {
    "document": "STRING", "anchor": "STRING", "modality": "STRING", "kind": "STRING", "char_start": "INT64",
    "char_end": "INT64", "text": "STRING", "score": "DOUBLE", "source": "STRING", "x1": "DOUBLE", "y1": "DOUBLE",
    "x2": "DOUBLE", "y2": "DOUBLE", "mask": "STRING", "track": "STRING", "audio_start": "DOUBLE",
    "audio_end": "DOUBLE", "reason": "STRING",
}


class IngestStats(BaseModel):
    """What one `build_graph` call did."""

    seen: int = 0
    ingested: int = 0
    skipped: int = Field(0, description="already in the ingest log with the same Result")
    replaced: int = Field(0, description="in the log with a different Result: old subgraph deleted, new written")
    batches: int = 0
    merged_entities: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = Field(default_factory=dict, description="nodes / edges per table after the run")

    @property
    def docs_per_second(self) -> float:
        return self.ingested / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------------------------
# Result -> rows
# ---------------------------------------------------------------------------------------------------------------


class _Rows:
    """The rows of one batch, per table; dict keys dedupe within the batch."""

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.entities: dict[str, dict[str, Any]] = {}
        self.mentions: dict[str, dict[str, Any]] = {}
        self.mention_of: set[tuple[str, str]] = set()
        self.in_doc: set[tuple[str, str]] = set()
        self.relations: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.roles: set[tuple[str, str, str, str]] = set()
        self.triggers: set[tuple[str, str]] = set()


def _mention_row(mention_id: str, doc_id: str, **values: Any) -> dict[str, Any]:
    row = {column: None for column in MENTION_COLUMNS}
    row.update(values, id=mention_id, document=doc_id)
    return row


def text_mention_id(doc_id: str, mention: Mention) -> str:
    if mention.span is not None:
        return f"{doc_id}#t{mention.span.start}-{mention.span.end}"
    return f"{doc_id}#t?{normalize_name(mention.text)}"


def _grounding_row(anchor: str, doc_id: str, entity: Entity, k: int) -> dict[str, Any]:
    grounding = entity.groundings[k]
    mention_id = f"{anchor}|{normalize_type(entity.type)}/g{k}"
    common = {"anchor": anchor, "text": entity.text, "source": grounding.source}
    if isinstance(grounding, ImageRegion):
        box = grounding.box
        return _mention_row(mention_id, doc_id, modality="image", kind="image", score=grounding.score,
                            x1=box.x1, y1=box.y1, x2=box.x2, y2=box.y2,
                            mask=grounding.mask.model_dump_json() if grounding.mask else None, **common)
    if isinstance(grounding, Track):
        boxes = [f.box for f in grounding.frames]
        extent = {}
        if boxes:  # the box covering the whole track, so box queries find video mentions too
            extent = {"x1": min(b.x1 for b in boxes), "y1": min(b.y1 for b in boxes),
                      "x2": max(b.x2 for b in boxes), "y2": max(b.y2 for b in boxes)}
        return _mention_row(mention_id, doc_id, modality="video", kind="video", track=grounding.model_dump_json(),
                            audio_start=grounding.start, audio_end=grounding.end, **extent, **common)
    if isinstance(grounding, TimeSpan):
        return _mention_row(mention_id, doc_id, modality="audio", kind="audio", score=grounding.score,
                            audio_start=grounding.start, audio_end=grounding.end, **common)
    assert isinstance(grounding, NoRegion)
    return _mention_row(mention_id, doc_id, modality=grounding.modality, kind="none", reason=grounding.reason,
                        **common)


def result_rows(doc_id: str, result: Result, rows: _Rows, media: dict[str, str] | None = None) -> set[str]:
    """Add one document's rows to `rows`; returns the entity keys it touched (for resolution)."""
    keys: set[str] = set()
    rows.documents[doc_id] = {"id": doc_id, "text": result.text,
                              "media": json.dumps(media if media is not None else result.media, sort_keys=True)}

    def add_entity(name: str, entity_type: str) -> str:
        key, etype = normalize_name(name), normalize_type(entity_type)
        eid = f"{key}|{etype}"
        rows.entities.setdefault(eid, {"id": eid, "key": key, "name": name, "type": etype})
        keys.add(key)
        return eid

    def add_text_mention(mention: Mention) -> str:
        mid = text_mention_id(doc_id, mention)
        span = mention.span
        rows.mentions.setdefault(mid, _mention_row(
            mid, doc_id, modality="text", kind="text", text=mention.text,
            char_start=span.start if span else None, char_end=span.end if span else None))
        rows.in_doc.add((mid, doc_id))
        return mid

    by_span: dict[tuple[int, int], str] = {}
    by_key: dict[str, str] = {}
    for entity in result.entities:
        eid = add_entity(entity.text, entity.type)
        mid = add_text_mention(entity)
        rows.mention_of.add((mid, eid))
        if entity.span is not None:
            by_span.setdefault((entity.span.start, entity.span.end), eid)
        by_key.setdefault(normalize_name(entity.text), eid)
        for k in range(len(entity.groundings)):
            grow = _grounding_row(mid, doc_id, entity, k)
            rows.mentions[grow["id"]] = grow
            rows.in_doc.add((grow["id"], doc_id))
            rows.mention_of.add((grow["id"], eid))

    def link(mention: Mention) -> tuple[str, str]:
        """(entity id, text mention id) of a relation/argument mention."""
        eid = None
        if mention.span is not None:
            eid = by_span.get((mention.span.start, mention.span.end))
        eid = eid or by_key.get(normalize_name(mention.text))
        mid = add_text_mention(mention)
        if eid is None:
            eid = add_entity(mention.text, GENERIC_ARGUMENT_TYPE)
            by_key.setdefault(normalize_name(mention.text), eid)
            if mention.span is not None:
                by_span.setdefault((mention.span.start, mention.span.end), eid)
        rows.mention_of.add((mid, eid))
        return eid, mid

    for relation in result.relations:
        (head, hm), (tail, tm) = link(relation.head), link(relation.tail)
        rows.relations.setdefault((head, relation.type, tail, doc_id), {
            "h": head, "t": tail, "type": relation.type, "document": doc_id, "score": None,
            "head_mention": hm, "tail_mention": tm})

    for event in result.events:
        trigger = add_text_mention(event.trigger)
        event_id = f"{trigger.replace('#t', '#e', 1)}|{event.type}"
        rows.events[event_id] = {"id": event_id, "type": event.type, "trigger": trigger, "document": doc_id}
        rows.triggers.add((event_id, trigger))
        for argument in event.arguments:
            eid, mid = link(argument.entity)
            rows.roles.add((event_id, eid, argument.role, mid))
    return keys


def _cast(column: str, kind: str) -> str:
    return f"r.{column}" if kind == "STRING" else f"CAST(r.{column} AS {kind})"


_MENTION_SET = ", ".join(f"m.{c} = {_cast(c, t)}" for c, t in MENTION_COLUMNS.items())

STATEMENTS: list[tuple[str, str]] = [
    ("documents", "UNWIND $rows AS r MERGE (d:Document {id: r.id}) SET d.text = r.text, d.media = r.media"),
    ("entities", ("UNWIND $rows AS r MERGE (e:Entity {id: r.id}) "
                 "ON CREATE SET e.key = r.key, e.name = r.name, e.type = r.type")),
    ("mentions", f"UNWIND $rows AS r MERGE (m:Mention {{id: r.id}}) SET {_MENTION_SET}"),
    ("in_doc", "UNWIND $rows AS r MATCH (m:Mention {id: r.a}), (d:Document {id: r.b}) MERGE (m)-[:IN_DOC]->(d)"),
    ("mention_of", ("UNWIND $rows AS r MATCH (m:Mention {id: r.a}), (e:Entity {id: r.b}) "
                   "MERGE (m)-[:MENTION_OF]->(e)")),
    ("relations", ("UNWIND $rows AS r MATCH (h:Entity {id: r.h}), (t:Entity {id: r.t}) "
                  "MERGE (h)-[x:RELATION {type: r.type, document: r.document}]->(t) "
                  "ON CREATE SET x.score = CAST(r.score AS DOUBLE), x.head_mention = r.head_mention, "
                  "x.tail_mention = r.tail_mention")),
    ("events", ("UNWIND $rows AS r MERGE (ev:Event {id: r.id}) "
               "SET ev.type = r.type, ev.trigger = r.trigger, ev.document = r.document")),
    ("triggers", "UNWIND $rows AS r MATCH (ev:Event {id: r.a}), (m:Mention {id: r.b}) MERGE (ev)-[:TRIGGER]->(m)"),
    ("roles", ("UNWIND $rows AS r MATCH (ev:Event {id: r.ev}), (e:Entity {id: r.e}) "
              "MERGE (ev)-[:ROLE {role: r.role, mention: r.m}]->(e)")),
]


def _table_rows(rows: _Rows) -> dict[str, list[dict[str, Any]]]:
    """Entities whose key was collapsed (generic type) are still written first, then resolution merges them."""
    return {
        "documents": list(rows.documents.values()),
        "entities": list(rows.entities.values()),
        "mentions": list(rows.mentions.values()),
        "in_doc": [{"a": a, "b": b} for a, b in sorted(rows.in_doc)],
        "mention_of": [{"a": a, "b": b} for a, b in sorted(rows.mention_of)],
        "relations": list(rows.relations.values()),
        "events": list(rows.events.values()),
        "triggers": [{"a": a, "b": b} for a, b in sorted(rows.triggers)],
        "roles": [{"ev": ev, "e": e, "role": role, "m": m} for ev, e, role, m in sorted(rows.roles)],
    }


def write_rows(store: GraphStore, rows: _Rows) -> None:
    tables = _table_rows(rows)
    for table, cypher in STATEMENTS:
        if tables[table]:
            store.execute(cypher, {"rows": tables[table]})


def delete_document(store: GraphStore, doc_id: str) -> None:
    """Remove a document's mentions, events and relations (entities left without mentions go too)."""
    p = {"d": doc_id}
    store.execute("MATCH (m:Mention {document: $d}) DETACH DELETE m", p)
    store.execute("MATCH (ev:Event {document: $d}) DETACH DELETE ev", p)
    store.execute("MATCH ()-[r:RELATION {document: $d}]->() DELETE r", p)
    store.execute("MATCH (e:Entity) WHERE NOT EXISTS { MATCH (:Mention)-[:MENTION_OF]->(e) } DETACH DELETE e")


# ---------------------------------------------------------------------------------------------------------------
# The ingest log
# ---------------------------------------------------------------------------------------------------------------


def result_hash(result: Result, media: dict[str, str] | None = None) -> str:
    payload = result.model_dump_json(exclude={"timings"}) + json.dumps(media, sort_keys=True)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def read_ingest_log(db_dir: str | os.PathLike[str]) -> dict[str, str]:
    """doc id -> Result hash of every logged document (the last line wins); a torn last line is ignored."""
    path = Path(db_dir) / INGEST_LOG
    done: dict[str, str] = {}
    if not path.is_file():
        return done
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                item = json.loads(line)
                done[str(item["id"])] = str(item["hash"])
            except (ValueError, KeyError, TypeError):
                logger.warning("%s: skipping an unreadable line (an interrupted write)", path)
    return done


def _append_log(db_dir: Path, entries: list[tuple[str, str]]) -> None:
    with (db_dir / INGEST_LOG).open("a", encoding="utf-8") as handle:
        for doc_id, digest in entries:
            handle.write(json.dumps({"id": doc_id, "hash": digest}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------------------------
# build_graph
# ---------------------------------------------------------------------------------------------------------------

Item = tuple[str, Result] | tuple[str, Result, dict[str, str]]


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_graph(
    results: Iterable[Item],
    db_dir: str | os.PathLike[str],
    batch_size: int = 256,
    resolve_with_embeddings: bool = False,
    embedding_threshold: float = DEFAULT_EMBEDDING_THRESHOLD,
    progress: bool = True,
    total: int | None = None,
    on_batch: Callable[[IngestStats], None] | None = None,
) -> IngestStats:
    """Ingest `(doc_id, Result)` pairs (optionally `(doc_id, Result, media paths)`) into the graph in `db_dir`.

    Re-running with the same inputs changes nothing; an interrupted run resumes where its last committed batch
    ended. `media` (modality -> path) overrides `Result.media` in `Document.media`, so image crops can be drawn.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    folder = Path(db_dir)
    started = time.perf_counter()
    stats = IngestStats()
    done = read_ingest_log(folder)
    merger = EmbeddingMerger(embedding_threshold) if resolve_with_embeddings else None
    with GraphStore(folder) as store, tqdm(total=total, unit="doc", desc="kg ingest", disable=not progress) as bar:
        for batch in _batches(results, batch_size):
            rows, keys, logged, replace = _Rows(), set(), [], []
            latest: dict[str, tuple[Result, dict[str, str] | None]] = {}
            for item in batch:
                doc_id, result = str(item[0]), item[1]
                latest[doc_id] = (result, item[2] if len(item) > 2 else None)  # type: ignore[misc]
            stats.seen += len(batch)
            for doc_id, (result, media) in latest.items():
                digest = result_hash(result, media)
                previous = done.get(doc_id)
                if previous == digest:
                    stats.skipped += 1
                    continue
                if previous is not None:
                    replace.append(doc_id)
                keys |= result_rows(doc_id, result, rows, media)
                logged.append((doc_id, digest))
            stats.skipped += len(batch) - len(latest)
            if logged:
                with store.transaction():
                    for doc_id in replace:
                        delete_document(store, doc_id)
                    write_rows(store, rows)
                    stats.merged_entities += collapse_generic(store, keys)
                    if merger is not None:
                        stats.merged_entities += merger.merge_new(store)
                _append_log(folder, logged)
                done.update(logged)
                stats.ingested += len(logged) - len(replace)
                stats.replaced += len(replace)
                stats.batches += 1
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(stats)
        stats.counts = store.counts()
    stats.seconds = time.perf_counter() - started
    logger.info("kg ingest: %d new, %d replaced, %d skipped in %.1f s (%.1f docs/s) -> %s", stats.ingested,
                stats.replaced, stats.skipped, stats.seconds, stats.docs_per_second, folder)
    return stats


# ---------------------------------------------------------------------------------------------------------------
# Input readers
# ---------------------------------------------------------------------------------------------------------------

RESULT_KEYS = ("result", "prediction", "pred", "gold")
MEDIA_KEYS = ("image", "audio", "video")


def _looks_like_result(row: dict[str, Any]) -> bool:
    return any(k in row for k in RESULT_KEYS) or "entities" in row


def read_predictions(path: str | os.PathLike[str]) -> Iterator[tuple[str, Result]]:
    """`(id, Result)` per line of a jsonl file: `{"id", "result"|"prediction"|"pred"|"gold": Result}` (what
    `reamo eval` writes, and `reamo.datasets.write_jsonl` Examples) or a Result object with an extra "id" field.
    Lines that cannot be read are logged with file:line and skipped."""
    source = Path(path)
    with source.open(encoding="utf-8", errors="replace") as handle:  # a binary line fails below, not the whole file
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield _prediction(line)
            except (ValueError, ValidationError) as error:
                logger.warning("%s:%d: skipped: %s", source, number, str(error).splitlines()[0])


def _prediction(line: str) -> tuple[str, Result]:
    row = json.loads(line)
    if not isinstance(row, dict) or "id" not in row:
        raise ValueError('expected a JSON object with an "id"')
    key = next((k for k in RESULT_KEYS if k in row), None)
    payload = row[key] if key else {k: v for k, v in row.items() if k != "id"}
    return str(row["id"]), Result.model_validate(payload)


INPUT_FORMATS = ('a predictions jsonl ({"id", "result": Result} per line, what `reamo eval` writes) or a corpus '
                 'jsonl ({"id", "text", "image"?, "audio"?, "video"?} per line)')


def check_input(path: str | os.PathLike[str]) -> None:
    """Raise ConfigError unless some line of `path` is a predictions row or a corpus item, naming the first bad
    line: a file of anything else (`/etc/passwd`) would otherwise "succeed" with 0 documents ingested."""
    from reamo.errors import ConfigError

    source = Path(path)
    parse = _prediction if sniff_input(source) == "predictions" else CorpusItem.model_validate_json
    first_problem = None
    with source.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                parse(line)
                return
            except (ValueError, ValidationError) as error:
                problem = str(error).splitlines()[0]
                if isinstance(error, json.JSONDecodeError):
                    problem = f"not JSON: {problem}"
                first_problem = first_problem or f"line {number}: {problem}"
    if first_problem is None:
        raise ConfigError(f"{source} is empty; give {INPUT_FORMATS}")
    raise ConfigError(f"{source} holds no usable lines; the first problem is {first_problem}. Give {INPUT_FORMATS}")


class CorpusItem(BaseModel):
    """One raw input of a corpus jsonl: text and optional media paths (relative to the corpus file)."""

    id: str
    text: str = ""
    image: str | None = None
    audio: str | None = None
    video: str | None = None


def read_corpus(path: str | os.PathLike[str]) -> Iterator[CorpusItem]:
    """Raw inputs `{"id", "text", "image"?, "audio"?, "video"?}`; media paths are resolved against the file's folder."""
    source = Path(path)
    with source.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = CorpusItem.model_validate_json(line)
            except ValidationError as error:
                logger.warning("%s:%d: skipped: %s", source, number, str(error).splitlines()[0])
                continue
            for modality in MEDIA_KEYS:
                value = getattr(item, modality)
                if value and not Path(value).is_absolute():
                    setattr(item, modality, str((source.parent / value).resolve()))
            yield item


def extract_corpus(items: Iterable[CorpusItem], agent: Any, tasks: Any = ("ner", "re", "ee"),
                   labels: Any = None, skip_ids: Iterable[str] = ()) -> Iterator[tuple[str, Result, dict[str, str]]]:
    """Run `agent.extract` on each raw input; yields (id, Result, media paths). Failing items are logged and
    skipped (their error names the file), so one bad image does not stop a corpus. Ids in `skip_ids` (already
    ingested: pass `read_ingest_log(db_dir)`) are not extracted again, which is what makes a resumed corpus cheap."""
    from reamo.errors import ReamoError

    skip = set(skip_ids)
    for item in items:
        if item.id in skip:
            continue
        media = {m: getattr(item, m) for m in MEDIA_KEYS if getattr(item, m)}
        try:
            result = agent.extract(text=item.text or None, tasks=tasks, labels=labels, **media)
        except ReamoError as error:
            logger.warning("corpus item %s skipped: %s", item.id, error)
            continue
        yield item.id, result, media


def sniff_input(path: str | os.PathLike[str]) -> str:
    """"predictions" when the first line holds a Result, else "corpus" (raw inputs that need an agent)."""
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    return "predictions"  # let read_predictions report the line
                return "predictions" if isinstance(row, dict) and _looks_like_result(row) else "corpus"
    return "predictions"


def iter_input(path: str | os.PathLike[str], agent_factory: Callable[[], Any] | None = None,
               tasks: Any = ("ner", "re", "ee"), labels: Any = None,
               db_dir: str | os.PathLike[str] | None = None) -> Iterator[Item]:
    """Items for `build_graph` from a predictions jsonl, or from a corpus jsonl run through `agent_factory()`
    (default: the embedded default agent); with `db_dir`, corpus items already ingested there are not re-extracted."""
    if sniff_input(path) == "predictions":
        yield from read_predictions(path)
        return
    if agent_factory is None:
        from reamo.agent import Agent

        def agent_factory() -> Any:
            return Agent.from_pretrained("default")

    done = read_ingest_log(db_dir) if db_dir is not None else {}
    yield from extract_corpus(read_corpus(path), agent_factory(), tasks=tasks, labels=labels, skip_ids=done)


def build_from_file(
    path: str | os.PathLike[str],
    db_dir: str | os.PathLike[str],
    batch_size: int = 256,
    resolve_with_embeddings: bool = False,
    embedding_threshold: float = DEFAULT_EMBEDDING_THRESHOLD,
    agent_factory: Callable[[], Any] | None = None,
    tasks: Any = ("ner", "re", "ee"),
    labels: Any = None,
    progress: bool = True,
) -> IngestStats:
    """`reamo kg build`: a predictions jsonl, or a corpus jsonl run through the agent first, into `db_dir`."""
    source = Path(path)
    if not source.is_file():
        from reamo.errors import ConfigError

        raise ConfigError(f"input file not found: {source}; give a predictions jsonl (id + Result per line) or a "
                          'corpus jsonl ({"id", "text", "image"?, "audio"?, "video"?} per line)')
    check_input(source)
    with source.open("rb") as handle:
        total = sum(1 for line in handle if line.strip())
    items = iter_input(source, agent_factory=agent_factory, tasks=tasks, labels=labels, db_dir=db_dir)
    return build_graph(items, db_dir, batch_size=batch_size, resolve_with_embeddings=resolve_with_embeddings,
                       embedding_threshold=embedding_threshold, progress=progress, total=total)
