"""Corpus-scale extraction with Ray Data: one agent per actor (one per GPU on a cluster), resumable Parquet output.

Input: jsonl or Parquet (a file or a folder of them) with rows `{"id", "text", "image"?, "audio"?, "video"?}`;
media are paths, relative ones resolved against `media_root` (default: the input file's folder).
Output: `output_dir/part-*.parquet` with columns `id, result_json, error, seconds`. Each actor call writes its
batch as one file, atomically (temporary name, then `os.replace`), so a killed run leaves only complete files and
`resume=True` skips every id that already has a result (ids that only failed are tried again).

The actor runs the agent's one pipeline on the whole batch (`Agent.prepare` per row, then `Agent.run`: batched
generation and scoring, then the back half per row); a row that fails (bad media, a crashing tool) is recorded with
its error and the others go on.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from reamo.files import atomic_path
from reamo.errors import ConfigError, MissingDependencyError
from reamo.schema import ALL_TASKS, DEFAULT_TASKS, Result

logger = logging.getLogger(__name__)

MEDIA_COLUMNS = ("image", "audio", "video")
OUTPUT_COLUMNS = ("id", "result_json", "error", "seconds")


class CorpusStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    total: int
    skipped: int
    processed: int
    succeeded: int
    failed: int
    seconds: float
    output_dir: str


def _require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise MissingDependencyError(
            f"corpus extraction needs Ray Data ({error}); install it with: pip install 'reamo[corpus]'"
        ) from error
    return ray


# ---------------------------------------------------------------------------------------------------------------
# Agent factories (picklable: Ray ships them to the actors)
# ---------------------------------------------------------------------------------------------------------------


def pretrained_agent(name_or_path: str = "default", **settings: Any) -> Any:
    """`Agent.from_pretrained(name_or_path, **settings)`: a module-level function, so `partial` of it pickles."""
    from reamo.agent import Agent

    return Agent.from_pretrained(name_or_path, **settings)


def make_factory(agent: str | Callable[[], Any]) -> Callable[[], Any]:
    """A model name / folder becomes a factory; a callable (module-level function or functools.partial) stays."""
    if isinstance(agent, str):
        return functools.partial(pretrained_agent, agent)
    if not callable(agent):
        raise ConfigError(f"agent_factory must be a model name, a folder or a callable, not {type(agent).__name__}")
    return agent


# ---------------------------------------------------------------------------------------------------------------
# Results on disk
# ---------------------------------------------------------------------------------------------------------------


def _output_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("part-*.parquet")) if output_dir.is_dir() else []


def done_ids(output_dir: str | os.PathLike) -> set[str]:
    """Ids with a result in `output_dir` (unreadable files, e.g. from a crash mid-copy, are set aside)."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for path in _output_files(Path(output_dir)):
        try:
            table = pq.read_table(path, columns=["id", "result_json"])
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for damaged files
            aside = path.with_name(path.name + ".unreadable")
            logger.warning("setting aside unreadable output %s (%s); its ids will be extracted again", path, error)
            os.replace(path, aside)
            continue
        for row_id, result in zip(table.column("id").to_pylist(), table.column("result_json").to_pylist()):
            if result is not None:
                done.add(row_id)
    return done


def read_results(output_dir: str | os.PathLike) -> dict[str, Result | str]:
    """id -> `Result` (or the error message of an id that has no result), one entry per id."""
    import pyarrow.parquet as pq

    out: dict[str, Result | str] = {}
    for path in _output_files(Path(output_dir)):
        for row in pq.read_table(path).to_pylist():
            if row["result_json"] is not None:
                out[row["id"]] = Result.model_validate_json(row["result_json"])
            elif not isinstance(out.get(row["id"]), Result):
                out[row["id"]] = row["error"]
    return out


def _write_part(rows: dict[str, list[Any]], output_dir: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("result_json", pa.string()), ("error", pa.string()),
                        ("seconds", pa.float64())])
    table = pa.Table.from_pydict(rows, schema=schema)
    name = f"part-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
    with atomic_path(output_dir / name) as temporary:
        pq.write_table(table, temporary)
    return output_dir / name


# ---------------------------------------------------------------------------------------------------------------
# The actor
# ---------------------------------------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    """A Ray/NumPy batch cell as a plain Python value (None for missing / NaN)."""
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


class AgentActor:
    """Holds one agent (built once per actor process); each call extracts one batch and writes it as one file."""

    def __init__(self, agent_factory: Callable[[], Any], output_dir: str, tasks: tuple[str, ...],
                 labels: Any = None, media_root: str | None = None) -> None:
        self.agent = agent_factory()
        self.output_dir = Path(output_dir)
        self.tasks = tasks
        self.labels = labels
        self.media_root = Path(media_root) if media_root else None

    def _media(self, value: Any) -> str | None:
        value = _cell(value)
        if value is None or value == "":
            return None
        path = Path(str(value)).expanduser()
        if not path.is_absolute() and self.media_root is not None:
            path = self.media_root / path
        return str(path)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(_cell(i)) for i in batch["id"]]
        count = len(ids)
        texts = [_cell(t) or "" for t in batch["text"]] if "text" in batch else [""] * count
        media = {m: [self._media(v) for v in batch[m]] if m in batch else [None] * count for m in MEDIA_COLUMNS}
        results: list[str | None] = [None] * count
        errors: list[str | None] = [None] * count
        seconds = [0.0] * count

        prepared: dict[int, Any] = {}
        for row in range(count):
            started = time.perf_counter()
            try:
                prepared[row] = self.agent.prepare(texts[row], media["image"][row], media["audio"][row],
                                                   media["video"][row], self.tasks, self.labels)
            except Exception as error:  # noqa: BLE001 - one bad row (bad media, a crashing tool) is recorded
                errors[row] = f"{type(error).__name__}: {error}"
            seconds[row] = time.perf_counter() - started
        if prepared:
            rows = list(prepared)
            started = time.perf_counter()
            outcomes = self.agent.run([prepared[r] for r in rows], raise_errors=False)
            shared = (time.perf_counter() - started) / len(rows)
            for r, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, Result):
                    results[r] = outcome.model_dump_json()
                else:
                    errors[r] = f"{type(outcome).__name__}: {outcome}"
                seconds[r] += shared
        _write_part({"id": ids, "result_json": results, "error": errors, "seconds": seconds}, self.output_dir)
        return {"id": np.array(ids, dtype=object), "ok": np.array([r is not None for r in results]),
                "seconds": np.array(seconds)}


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


def _drop_done(batch: dict[str, np.ndarray], done: frozenset[str]) -> dict[str, np.ndarray]:
    keep = np.array([str(_cell(i)) not in done for i in batch["id"]], dtype=bool)
    return {key: np.asarray(values)[keep] for key, values in batch.items()}


def _read(ray: Any, input_path: Path) -> Any:
    files = [input_path] if input_path.is_file() else sorted(input_path.glob("*"))
    suffixes = {p.suffix.lower() for p in files if p.is_file()}
    if suffixes <= {".parquet"} and suffixes:
        return ray.data.read_parquet(str(input_path))
    if suffixes <= {".jsonl", ".json"} and suffixes:
        return ray.data.read_json(str(input_path), lines=True) if _json_lines_supported(ray) else \
            ray.data.read_json(str(input_path))
    raise ConfigError(f"corpus input {input_path}: expected a .jsonl or .parquet file (or a folder of them), "
                      f"found {sorted(suffixes) or 'nothing'}")


def _json_lines_supported(ray: Any) -> bool:
    import inspect

    return "lines" in inspect.signature(ray.data.read_json).parameters


def extract_corpus(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    agent_factory: str | Callable[[], Any] = "default",
    num_actors: int = 2,
    batch_size: int = 4,
    resume: bool = True,
    tasks: tuple[str, ...] | str = DEFAULT_TASKS,
    labels: Any = None,
    media_root: str | os.PathLike | None = None,
    ray_init: dict[str, Any] | None = None,
) -> CorpusStats:
    """Extract every row of `input_path` into `output_dir` with `num_actors` agents; returns the counts.

    Uses the running Ray (a cluster: `ray.init(address="auto")` before calling), else starts a local one with
    `ray_init` arguments and stops it afterwards. Each actor takes one GPU when the cluster has GPUs.
    """
    ray = _require_ray()
    if num_actors < 1 or batch_size < 1:
        raise ConfigError(f"num_actors and batch_size must be >= 1 (got {num_actors}, {batch_size})")
    if isinstance(tasks, str):
        tasks = tuple(t.strip() for t in tasks.split(",") if t.strip())
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown or not tasks:
        raise ConfigError(f"unknown task(s) {unknown or tasks}; choose from {', '.join(ALL_TASKS)}")
    source = Path(input_path).expanduser().resolve()
    if not source.exists():
        raise ConfigError(f"corpus input not found: {source}")
    target = Path(output_dir).expanduser().resolve()
    target.mkdir(parents=True, exist_ok=True)
    if not resume:
        stale = _output_files(target)
        if stale:
            raise ConfigError(f"{target} already holds {len(stale)} result file(s); use resume=True (--resume) to "
                              "continue, or an empty output folder to start over")
    root = str(Path(media_root).expanduser().resolve()) if media_root else str(source if source.is_dir() else source.parent)
    factory = make_factory(agent_factory)

    started_ray = False
    if not ray.is_initialized():
        ray.init(**({"include_dashboard": False, "num_cpus": num_actors + 1} | (ray_init or {})))
        started_ray = True
    try:
        dataset = _read(ray, source)
        ids = [str(i) for i in dataset.select_columns(["id"]).to_pandas()["id"].tolist()]
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        if duplicates:
            raise ConfigError(f"corpus {source} repeats ids {duplicates[:10]}; every row needs a unique id")
        done = frozenset(done_ids(target) & set(ids)) if resume else frozenset()
        todo = len(ids) - len(done)
        logger.info("corpus %s: %d rows, %d already done, %d to extract with %d actor(s)", source, len(ids),
                    len(done), todo, num_actors)
        began = time.perf_counter()
        succeeded = failed = 0
        if todo:
            if done:
                dataset = dataset.map_batches(_drop_done, fn_kwargs={"done": done}, batch_format="numpy")
            resources = ray.cluster_resources()
            gpus = 1 if resources.get("GPU", 0) >= 1 else 0
            # one CPU per actor; on a small machine less, so one CPU stays free for the read tasks
            cpus = min(1.0, max(resources.get("CPU", 1.0) - 1.0, 0.5) / num_actors)
            results = dataset.map_batches(
                AgentActor,
                fn_constructor_args=(factory, str(target), tuple(tasks), labels, root),
                batch_size=batch_size,
                batch_format="numpy",
                concurrency=num_actors,
                num_gpus=gpus,
                num_cpus=cpus,
            )
            for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                ok = int(np.sum(batch["ok"]))
                succeeded += ok
                failed += len(batch["ok"]) - ok
        return CorpusStats(total=len(ids), skipped=len(done), processed=succeeded + failed, succeeded=succeeded,
                           failed=failed, seconds=time.perf_counter() - began, output_dir=str(target))
    finally:
        if started_ray:
            ray.shutdown()
