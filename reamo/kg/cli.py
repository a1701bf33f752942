"""`reamo kg ...`: thin commands over reamo.kg (build, query, canned queries, export)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, Optional

import typer

from reamo.errors import ReamoError

kg_app = typer.Typer(no_args_is_help=True, help="Multimodal knowledge graph of extraction results (LadybugDB).")
DB = typer.Option(Path("reamo-kg"), "--db", help="Graph database folder.")


def _fail(message: str) -> NoReturn:
    """One `error: ...` line on stderr and exit code 2, like the other `reamo` commands."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """A missing graph, refused or bad Cypher, an unusable input file: a readable error instead of a traceback."""
    try:
        yield
    except ReamoError as error:
        _fail(str(error))


@kg_app.command("build")
def build(
    source: Path = typer.Argument(..., help="predictions.jsonl (id + Result) or a corpus jsonl of raw inputs"),
    db: Path = DB,
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    embeddings: bool = typer.Option(False, "--embeddings", help="also merge entities by MiniLM similarity"),
    threshold: float = typer.Option(0.9, "--threshold"),
) -> None:
    """Ingest results (running the agent first for raw inputs); re-running changes nothing."""
    from reamo.kg import build_from_file

    if not source.is_file():
        _fail(f"file not found: {source}")
    with _reported():
        stats = build_from_file(source, db, batch_size=batch_size, resolve_with_embeddings=embeddings,
                                embedding_threshold=threshold)
    typer.echo(stats.model_dump_json(indent=2) if hasattr(stats, "model_dump_json") else str(stats))


@kg_app.command("query")
def run_query(
    cypher: str = typer.Argument(..., help="a Cypher statement"),
    db: Path = DB,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run Cypher (read-only: clauses that touch files or the network are refused) and print the rows."""
    from reamo.kg import print_rows, query

    with _reported():
        rows = query(db, cypher)
    if as_json:
        typer.echo(json.dumps(rows, default=str, indent=2))
    else:
        print_rows(rows)


def _canned(name: str):
    def command(entity: str = typer.Argument(...), db: Path = DB,
                as_json: bool = typer.Option(False, "--json", help="every field, as JSON")) -> None:
        from reamo import kg
        from reamo.kg.query import where_table

        with _reported():
            rows = getattr(kg, name)(db, entity)
        if as_json:
            typer.echo(json.dumps(rows, default=str, indent=2))
            return
        kg.print_rows(where_table(rows) if name == "where_is" else rows, title=f"{name.replace('_', ' ')} {entity}")

    command.__doc__ = {"where_is": "Where an entity appears: documents, image regions, audio spans, tracks.",
                       "relations_of": "Relations of an entity.", "events_of": "Events an entity took part in."}[name]
    return command


kg_app.command("where-is")(_canned("where_is"))
kg_app.command("relations")(_canned("relations_of"))
kg_app.command("events")(_canned("events_of"))


@kg_app.command("export")
def export_graph(
    db: Path = DB,
    fmt: str = typer.Option("ttl", "--format", help="ttl | jsonld | cypher"),
    out: Optional[Path] = typer.Option(None, "--out"),
    neo4j_url: Optional[str] = typer.Option(None, "--neo4j-url", help="bolt://host:7687 to push to a Neo4j server"),
    user: str = typer.Option("neo4j", "--user"),
    password: Optional[str] = typer.Option(None, "--password", envvar="NEO4J_PASSWORD"),
) -> None:
    """Export as RDF Turtle / JSON-LD, Cypher statements, or straight into Neo4j."""
    from reamo.kg.export import export

    kwargs = {"user": user, "password": password} if neo4j_url else {}
    with _reported():
        count = export(db, fmt, path=out, url=neo4j_url, **kwargs)
    typer.echo(f"exported {count} items" + (f" to {out}" if out else ""))
