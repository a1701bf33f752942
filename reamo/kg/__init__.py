"""Multimodal knowledge graph of extraction Results: documents, entities, mentions (text spans, image regions,
video tracks, audio spans), relations and events in an embedded LadybugDB graph, queried with Cypher.

    from reamo.kg import build_graph, read_predictions, query, where_is
    build_graph(read_predictions("predictions.jsonl"), "kg/")
    where_is("kg/", "Rafael Nadal")

Submodules load their heavy dependencies (rdflib, networkx, the MiniLM encoder) only when used.
"""

from reamo.kg.ingest import (
    CorpusItem,
    IngestStats,
    build_from_file,
    build_graph,
    extract_corpus,
    iter_input,
    read_corpus,
    read_ingest_log,
    read_predictions,
)
from reamo.kg.query import events_of, find_entities, neighbourhood, print_rows, query, relations_of, where_is
from reamo.kg.resolve import GENERIC_TYPES, entity_id, normalize_name, normalize_type
from reamo.kg.store import GraphStore, graph_counts

__all__ = [
    "GENERIC_TYPES", "CorpusItem", "GraphStore", "IngestStats", "build_from_file", "build_graph", "entity_id", "events_of",
    "extract_corpus", "find_entities", "graph_counts", "iter_input", "neighbourhood", "normalize_name",
    "normalize_type", "print_rows", "query", "read_corpus", "read_ingest_log", "read_predictions", "relations_of",
    "where_is",
]
