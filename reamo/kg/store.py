"""The embedded graph database: one LadybugDB file in a folder, its schema, and a small connection wrapper.

LadybugDB (PyPI `ladybug`, the maintained MIT fork of Kuzu) runs in-process, so a knowledge graph is a folder that
can be copied around and queried with Cypher without a server. The folder holds:

* `graph.lbug` (+ its write-ahead log): the database,
* `ingest_log.jsonl`: one line per ingested document (id + hash of its Result), appended after each committed batch,
  which is how an interrupted ingest resumes.

Schema (node tables / rel tables):

* `Document(id, text, media JSON)`
* `Entity(id = key + '|' + type, key = normalized name, name, type, embedding FLOAT[] nullable)`
* `Mention(id, document, anchor, modality, kind, char_start, char_end, text, score, source, x1, y1, x2, y2, mask JSON,
  track JSON, audio_start, audio_end, reason)`: a text mention (kind "text", char span) or one grounding of it
  (kind "image" box+mask / "video" track / "audio" time span / "none" = the tool looked and found nothing);
  `anchor` is the id of the text mention a grounding belongs to. (`char_start`/`char_end`, not `start`/`end`:
  END is a Cypher keyword.)
* `Event(id, type, trigger = mention id, document)`
* `MENTION_OF(Mention -> Entity)`, `IN_DOC(Mention -> Document)`,
  `RELATION(Entity -> Entity, type, document, score, head_mention, tail_mention)`,
  `ROLE(Event -> Entity, role, mention)`, `TRIGGER(Event -> Mention)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reamo.errors import ConfigError, MissingDependencyError, QueryRefusedError

logger = logging.getLogger(__name__)

DB_FILE = "graph.lbug"
INGEST_LOG = "ingest_log.jsonl"
# The engine's default buffer pool is ~80% of RAM, which makes every open slow (~0.1-0.3 s); graphs of extraction
# results fit in far less. Override with REAMO_KG_BUFFER_POOL_MB.
DEFAULT_BUFFER_POOL_MB = 512

NODE_TABLES: dict[str, str] = {
    "Document": "id STRING, text STRING, media STRING, PRIMARY KEY (id)",
    "Entity": "id STRING, key STRING, name STRING, type STRING, embedding FLOAT[], PRIMARY KEY (id)",
    "Mention": (
        "id STRING, document STRING, anchor STRING, modality STRING, kind STRING, char_start INT64, char_end INT64, "
        "text STRING, score DOUBLE, source STRING, x1 DOUBLE, y1 DOUBLE, x2 DOUBLE, y2 DOUBLE, mask STRING, "
        "track STRING, audio_start DOUBLE, audio_end DOUBLE, reason STRING, PRIMARY KEY (id)"
    ),
    "Event": "id STRING, type STRING, trigger STRING, document STRING, PRIMARY KEY (id)",
}
REL_TABLES: dict[str, str] = {
    "MENTION_OF": "FROM Mention TO Entity",
    "IN_DOC": "FROM Mention TO Document",
    "RELATION": ("FROM Entity TO Entity, type STRING, document STRING, score DOUBLE, head_mention STRING, "
                 "tail_mention STRING"),
    "ROLE": "FROM Event TO Entity, role STRING, mention STRING",
    "TRIGGER": "FROM Event TO Mention",
}

_OPEN_LOCK = threading.Lock()

# Read-only guard. The engine has no switch that turns file or network access off (its settings are threads,
# timeout, home_directory, file_search_path, spill_to_disk, ...; `read_only=True` only stops writes to the graph), so
# a read-only store refuses, before the engine sees the text, every statement word of its Cypher grammar
# (LadybugDB src/antlr4/Cypher.g4) that reads or writes files or the network. Why each one:
FILE_CLAUSES: dict[str, str] = {
    "COPY": "COPY FROM / COPY TO read and write files",
    "LOAD": "LOAD FROM reads files (and Python objects); LOAD [EXTENSION] loads native code from disk",
    "INSTALL": "INSTALL downloads an extension from the network",
    "UPDATE": "UPDATE <extension> downloads it again",
    "UNINSTALL": "UNINSTALL deletes extension files",
    "EXPORT": "EXPORT DATABASE writes files",
    "IMPORT": "IMPORT DATABASE reads files",
    "ATTACH": "ATTACH opens another database file or server",
    "CHECKPOINT": "CHECKPOINT writes the database file",
}
# Functions that scan or write files (READ_CSV_SERIAL, READ_CSV_PARALLEL, READ_PARQUET, READ_NPY, READ_PANDAS; COPY_CSV,
# COPY_PARQUET; `CALL READ_CSV_SERIAL('/etc/passwd')` even crashes the process) and standalone `CALL <setting> = value`
# (home_directory, file_search_path and spill_to_disk decide which files are touched) are refused too.
_FILE_FUNCTIONS = ("READ_", "COPY_")
# Cypher tokens as the engine's lexer cuts them: comments and string literals (exact grammar, so a clause word inside
# either is text, and one the engine would not read as a literal is still checked), backtick names, ASCII word runs.
_CYPHER_TOKEN = re.compile(r"""
    (?P<comment>/\*(?:[^*]|\*[^/])*\*/|//[^\r\n]*)
  | (?P<string>(?P<q>['"])(?:(?!(?P=q))[^\\]|\\(?:[\\'"bBfFnNrRtT]|[xX][0-9A-Fa-f]{2}
        |[uU][0-9A-Fa-f]{4}(?:[0-9A-Fa-f]{4})?))*(?P=q))
  | (?P<name>(?:`[^`]*`)+)
  | (?P<word>[A-Za-z0-9_]+)
  | (?P<space>\s+)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


def _tokens(cypher: str) -> list[tuple[str, str]]:
    """(kind, text) per token, comments and whitespace dropped; backtick names unquoted."""
    out = []
    for match in _CYPHER_TOKEN.finditer(cypher):
        kind = match.lastgroup if match.lastgroup != "q" else "string"
        if kind in ("comment", "space"):
            continue
        text = match.group(kind)
        out.append((kind, text.replace("``", "\x00")[1:-1].replace("\x00", "`") if kind == "name" else text))
    return out


def _word_forms(word: str) -> list[str]:
    """What a word run can mean to the engine: itself, or, when it starts with a digit (`1LOAD`, `1e5LOAD`), the
    engine may cut a number off its front, so every tail that starts with a letter too."""
    upper = word.upper()
    if not upper[0].isdigit():
        return [upper]
    return [upper[i:] for i in range(1, len(upper)) if upper[i].isalpha() or upper[i] == "_"]


def refused_clause(cypher: str) -> str | None:
    """The first file- or network-touching clause in `cypher` (any statement of several), else None."""
    tokens = _tokens(cypher)
    for i, (kind, text) in enumerate(tokens):
        forms = _word_forms(text) if kind == "word" else [text.upper()] if kind == "name" else []
        after = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        for form in forms:
            if kind == "word" and form in FILE_CLAUSES:
                return form
            if form.startswith(_FILE_FUNCTIONS) and after == ("other", "("):
                return f"{form}(...)"
            if kind == "word" and form == "CALL" and i + 2 < len(tokens) and tokens[i + 2] == ("other", "=") \
                    and after[0] in ("word", "name"):
                return f"CALL {after[1]}=..."
    return None


def check_read_only(cypher: str) -> None:
    """Raise QueryRefusedError when `cypher` would read or write files or reach the network."""
    clause = refused_clause(cypher)
    if clause is None:
        return
    why = FILE_CLAUSES.get(clause, "it reads or writes files" if clause.endswith("(...)") else
                           "it changes engine settings")
    raise QueryRefusedError(
        f"read-only queries cannot touch files or the network: {clause} is refused ({why}); ask the graph with "
        "MATCH ... RETURN, build it with `reamo kg build` and write it out with `reamo kg export` (a property or "
        "variable with a clause's name can be written in backticks, e.g. n.`load`)"
    )


def _ladybug() -> Any:
    """The database module: `ladybug`, else `kuzu` (same Python API, the project it forks)."""
    try:
        import ladybug

        return ladybug
    except ImportError:
        try:
            import kuzu  # type: ignore[import-not-found]

            logger.warning("ladybug is not installed; using kuzu instead")
            return kuzu
        except ImportError as error:
            raise MissingDependencyError(
                "the knowledge graph needs the embedded graph database LadybugDB: pip install 'ladybug>=0.22,<1'"
            ) from error


def db_file(db_dir: str | os.PathLike[str]) -> Path:
    return Path(db_dir) / DB_FILE


class GraphStore:
    """An open knowledge-graph folder; use as a context manager so the database file is released.

    One `GraphStore` per folder per process at a time (the engine allows a single open writer).
    """

    def __init__(self, db_dir: str | os.PathLike[str], read_only: bool = False, create: bool = True,
                 buffer_pool_mb: int | None = None) -> None:
        self.db_dir = Path(db_dir)
        path = db_file(self.db_dir)
        if not path.exists():
            if read_only or not create:
                raise ConfigError(
                    f"no knowledge graph in {self.db_dir} ({path.name} missing); build one first with "
                    f"`reamo kg build <predictions.jsonl> --db {self.db_dir}`"
                )
            self.db_dir.mkdir(parents=True, exist_ok=True)
        lb = _ladybug()
        pool_mb = buffer_pool_mb or int(os.environ.get("REAMO_KG_BUFFER_POOL_MB", DEFAULT_BUFFER_POOL_MB))
        with _OPEN_LOCK:
            try:
                self._db = lb.Database(str(path), read_only=read_only, buffer_pool_size=pool_mb << 20)
            except RuntimeError as error:  # locked by a writer, not a database file, written by another version
                raise ConfigError(f"cannot open the knowledge graph in {self.db_dir}: {error}; close other programs "
                                  "using it, or rebuild it with `reamo kg build`") from error
            self._conn = lb.Connection(self._db)
        self.read_only = read_only
        if not read_only:
            self.ensure_schema()

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        with contextlib.suppress(Exception):
            self._db.close()

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_schema(self) -> None:
        for name, columns in NODE_TABLES.items():
            self._conn.execute(f"CREATE NODE TABLE IF NOT EXISTS {name}({columns})")
        for name, columns in REL_TABLES.items():
            self._conn.execute(f"CREATE REL TABLE IF NOT EXISTS {name}({columns})")

    # -- queries -----------------------------------------------------------------------------------------------------
    def execute(self, cypher: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one Cypher statement; rows as dicts keyed by the RETURN column names. A read-only store refuses
        statements that touch files or the network (QueryRefusedError)."""
        if self.read_only:
            check_read_only(cypher)
        result = self._conn.execute(cypher, params or {})
        results = result if isinstance(result, list) else [result]
        rows: list[dict[str, Any]] = []
        for item in results:
            columns = item.get_column_names()
            rows.extend(dict(zip(columns, row)) for row in item.get_all())
            item.close()
        return rows

    def scalar(self, cypher: str, params: dict[str, Any] | None = None) -> Any:
        rows = self.execute(cypher, params)
        return next(iter(rows[0].values())) if rows else None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[GraphStore]:
        """All statements inside commit together or not at all (rolled back on any exception)."""
        self._conn.execute("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            with contextlib.suppress(Exception):
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def counts(self) -> dict[str, int]:
        """Number of nodes per node table and edges per rel table."""
        out = {name: int(self.scalar(f"MATCH (n:{name}) RETURN count(n)")) for name in NODE_TABLES}
        for name in REL_TABLES:
            out[name] = int(self.scalar(f"MATCH ()-[r:{name}]->() RETURN count(r)"))
        return out


def graph_counts(db_dir: str | os.PathLike[str]) -> dict[str, int]:
    with GraphStore(db_dir, read_only=True) as store:
        return store.counts()
