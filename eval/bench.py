"""Performance benchmarks of an Agent: latency per input kind, model load time, memory, generation speed, batching.

What is measured (`run_bench`), each into `bench.json` (machine-readable, for comparing runs) and `bench.md`:

* latency per example (p50 / p95 / mean, and throughput = examples per second run one after another) of
  `agent.extract` for text only, text + image (scikit-image's astronaut photo), text + audio (10 s: espeak-ng
  speech looped and zero-padded to 10 s) and text + video (5 s at 10 fps of a panning crop of scikit-image's coffee
  photo, written with PyAV); one warm-up call per kind is not timed (it loads the tools' models once).
* model load time in a fresh Python process: "cold" with an empty `REAMO_CACHE_DIR` (the embedded default
  dequantizes its GGUF), then "cached" with the same folder; each with and without the interpreter's imports.
* peak RSS of this process (`resource.getrusage`) and its current RSS (psutil) after each phase.
* generation speed: tokens per second of `agent.model.generate` forced to exactly N new tokens
  (`min_new_tokens = max_new_tokens`), and batched (one `generate` of B prompts) vs unbatched (B calls of one
  prompt) for B = 1 and 4.
* the same latency / generation / batching on CUDA when `torch.cuda.is_available()` (else a skip note).
* throughput on the real datasets, as a user compares tools (`reamo.eval.throughput`): GMNER tweets/s batched and
  one-request p50/p95 next to spaCy on the same tweets, MNRE given pairs/s, M2E2 sentences/s, seconds per stage.

`quick=True` (for tests) uses 1 repeat, 8 new tokens, a few dataset examples and skips the subprocess load timings.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from reamo.files import write_atomic
from reamo.eval.throughput import measure_datasets
from reamo.eval.throughput import render_markdown as render_datasets

logger = logging.getLogger(__name__)

BENCH_TEXT = "Rafael Nadal gets engaged to Mery Perello in Mallorca."
IMAGE_TEXT = "Astronaut Eileen Collins poses in front of the flag at NASA."
AUDIO_TEXT = "The interview with Rafael Nadal was recorded in Mallorca."
VIDEO_TEXT = "A cup of coffee served at Starbucks in Seattle."
BATCH_TEXTS = [
    BENCH_TEXT,
    "Lionel Messi signed with Inter Miami in Florida.",
    "Police arrested two protesters in Paris on Monday.",
    "Angela Merkel met Emmanuel Macron in Berlin to discuss the European Union budget.",
]
AUDIO_SECONDS = 10.0
VIDEO_SECONDS = 5.0
VIDEO_FPS = 10
KINDS = ("text", "text+image", "text+audio", "text+video")

_LOAD_SCRIPT = """
import json, time
t0 = time.perf_counter()
from reamo.agent import Agent
t1 = time.perf_counter()
agent = Agent.from_pretrained({model!r})
t2 = time.perf_counter()
print("BENCH_LOAD " + json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1}}))
"""


# ---------------------------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------------------------


def latency_stats(seconds: list[float]) -> dict[str, float | int]:
    """p50 / p95 / mean / min / max of per-example seconds and sequential throughput (examples / s)."""
    if not seconds:
        return {"n": 0}
    values = np.asarray(seconds, dtype=float)
    return {
        "n": int(values.size),
        "p50_s": float(np.percentile(values, 50)),
        "p95_s": float(np.percentile(values, 95)),
        "mean_s": float(values.mean()),
        "min_s": float(values.min()),
        "max_s": float(values.max()),
        "throughput_per_s": float(values.size / values.sum()) if values.sum() > 0 else 0.0,
    }


def memory_now() -> dict[str, float]:
    """Peak RSS of this process so far (getrusage, KiB on Linux / bytes on macOS) and current RSS, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    info: dict[str, float] = {"peak_rss_mib": round(peak_mib, 1)}
    try:
        import psutil

        info["rss_mib"] = round(psutil.Process().memory_info().rss / (1024 * 1024), 1)
    except ImportError:
        pass
    return info


def _environment(agent: Any) -> dict[str, Any]:
    import torch

    params = sum(p.numel() for p in agent.model.parameters()) if hasattr(agent, "model") else None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "llm": str(getattr(getattr(agent.model, "config", None), "llm", "")) if hasattr(agent, "model") else "",
        "parameters": params,
    }


# ---------------------------------------------------------------------------------------------------------------
# Synthetic media
# ---------------------------------------------------------------------------------------------------------------


def bench_image() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def bench_audio(folder: Path, seconds: float = AUDIO_SECONDS) -> np.ndarray:
    """`seconds` of 16 kHz speech: espeak-ng says AUDIO_TEXT, looped with 0.5 s pauses and cut / padded."""
    from reamo.tools.audio import synthesize_speech

    from reamo.media import load_audio

    wav = synthesize_speech(AUDIO_TEXT, folder / "bench_speech.wav")
    speech = load_audio(wav).samples
    pause = np.zeros(8000, dtype=np.float32)
    target = int(seconds * 16000)
    pieces, total = [], 0
    while total < target:
        pieces += [speech, pause]
        total += len(speech) + len(pause)
    return np.concatenate(pieces)[:target].astype(np.float32)


def bench_video(folder: Path, seconds: float = VIDEO_SECONDS, fps: int = VIDEO_FPS) -> Path:
    """An MPEG-4 clip: a 320x240 window panning across scikit-image's coffee photo (400x600)."""
    import av
    from skimage import data

    photo = data.coffee()
    height, width = 240, 320
    frames = int(seconds * fps)
    path = folder / "bench_video.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            x = int((photo.shape[1] - width) * i / max(frames - 1, 1))
            y = int((photo.shape[0] - height) * i / max(frames - 1, 1))
            crop = np.ascontiguousarray(photo[y : y + height, x : x + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------------------------


def measure_load(model: str = "default", cold: bool = True, timeout_s: float = 600) -> dict[str, Any]:
    """Agent load time in fresh processes: cold (empty REAMO_CACHE_DIR) then cached (same folder, second run)."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="reamo-bench-cache-") as cache:
        env = dict(os.environ)
        if cold:
            env["REAMO_CACHE_DIR"] = cache
        runs = ("cold", "cached") if cold else ("cached",)
        for run in runs:
            started = time.perf_counter()
            completed = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT.format(model=model)], env=env,
                                       capture_output=True, text=True, timeout=timeout_s, check=False)
            wall = time.perf_counter() - started
            line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH_LOAD ")), None)
            if completed.returncode != 0 or line is None:
                tail = completed.stderr.strip().splitlines()[-1:] or [f"exit status {completed.returncode}"]
                results[run] = {"error": tail[0]}
                continue
            numbers = json.loads(line[len("BENCH_LOAD "):])
            results[run] = {**numbers, "process_wall_s": wall}
    return results


def _timed_calls(call: Callable[[], Any], repeats: int, warmup: bool) -> tuple[list[float], Any]:
    last = None
    if warmup:
        last = call()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        last = call()
        seconds.append(time.perf_counter() - started)
    return seconds, last


def measure_latency(agent: Any, media_dir: Path, repeats: int, warmup: bool, max_new_tokens: int | None,
                    kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """Per-kind latency stats, the mean seconds per agent stage, and memory after each kind."""
    inputs: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        try:
            if kind == "text":
                inputs[kind] = {"text": BENCH_TEXT}
            elif kind == "text+image":
                inputs[kind] = {"text": IMAGE_TEXT, "image": bench_image()}
            elif kind == "text+audio":
                inputs[kind] = {"text": AUDIO_TEXT, "audio": bench_audio(media_dir)}
            elif kind == "text+video":
                inputs[kind] = {"text": VIDEO_TEXT, "video": str(bench_video(media_dir))}
        except Exception as error:  # noqa: BLE001 - a missing synthesizer skips one kind, reported
            logger.warning("cannot build the %s input: %s", kind, error)
            inputs[kind] = {"error": f"{type(error).__name__}: {error}"}
    results: dict[str, Any] = {}
    for kind, kwargs in inputs.items():
        if "error" in kwargs:
            results[kind] = {"skipped": kwargs["error"]}
            continue
        stage_totals: dict[str, float] = {}

        def call(kwargs: dict[str, Any] = kwargs, totals: dict[str, float] = stage_totals) -> Any:
            result = agent.extract(tasks=("ner", "re"), max_new_tokens=max_new_tokens, **kwargs)
            for stage, secs in result.timings.items():
                totals[stage] = totals.get(stage, 0.0) + secs
            return result

        try:
            seconds, last = _timed_calls(call, repeats, warmup)
        except Exception as error:  # noqa: BLE001
            logger.warning("%s latency failed: %s", kind, error)
            results[kind] = {"skipped": f"{type(error).__name__}: {error}"}
            continue
        calls = repeats + (1 if warmup else 0)
        results[kind] = {
            **latency_stats(seconds),
            "stages_mean_s": {k: round(v / calls, 4) for k, v in stage_totals.items()},
            "entities_found": len(last.entities) if last is not None else 0,
            "memory": memory_now(),
        }
    return results


def measure_generation(model: Any, max_new_tokens: int, repeats: int, batch_sizes: tuple[int, ...] = (1, 4)
                       ) -> dict[str, Any]:
    """Tokens per second of `model.generate` forced to `max_new_tokens` tokens, batched vs one prompt at a time."""
    from reamo.prompting import build_messages, resolve_labels

    prompts = [model.render_prompt(build_messages(text, "", ("ner", "re"), resolve_labels(None), [], True, []))
               for text in BATCH_TEXTS]
    forced = {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens}

    def generate(batch: list[str]) -> None:
        model.generate(batch, **forced)

    generate(prompts[:1])  # first call pays one-time costs (kernels, caches)
    single, _ = _timed_calls(lambda: generate(prompts[:1]), repeats, warmup=False)
    prefill, _ = _timed_calls(lambda: model.generate(prompts[:1], max_new_tokens=1), repeats, warmup=False)
    total, first = float(np.median(single)), float(np.median(prefill))
    results: dict[str, Any] = {
        "new_tokens": max_new_tokens,
        "prompt_tokens": [len(model.tokenizer(p)["input_ids"]) for p in prompts],
        "single": {**latency_stats(single), "tokens_per_s": max_new_tokens / total,
                   "prefill_s": first,
                   "decode_tokens_per_s": (max_new_tokens - 1) / (total - first) if total > first else None},
        "batching": {},
    }
    for size in batch_sizes:
        batch = [prompts[i % len(prompts)] for i in range(size)]
        unbatched, _ = _timed_calls(lambda b=batch: [generate([p]) for p in b], repeats, warmup=False)
        batched, _ = _timed_calls(lambda b=batch: generate(b), repeats, warmup=False)
        tokens = size * max_new_tokens
        u, b = float(np.median(unbatched)), float(np.median(batched))
        results["batching"][str(size)] = {
            "unbatched_s": u, "batched_s": b,
            "unbatched_tokens_per_s": tokens / u, "batched_tokens_per_s": tokens / b,
            "speedup": u / b if b > 0 else 0.0,
        }
    results["memory"] = memory_now()
    return results


def measure_gpu(agent: Any, media_dir: Path, repeats: int, warmup: bool, max_new_tokens: int) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
    original = agent.model.device
    try:
        agent.model.to("cuda")
        torch.cuda.reset_peak_memory_stats()
        latency = measure_latency(agent, media_dir, repeats, warmup, max_new_tokens, kinds=("text",))
        generation = measure_generation(agent.model, max_new_tokens, repeats)
        return {
            "device": torch.cuda.get_device_name(0),
            "latency": latency,
            "generation": generation,
            "max_memory_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        }
    finally:
        agent.model.to(original)


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _latency_table(latency: dict[str, Any]) -> list[str]:
    lines = ["| input | n | p50 s | p95 s | mean s | throughput ex/s | peak RSS MiB | stages (mean s) |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, stats in latency.items():
        if "skipped" in stats:
            lines.append(f"| {kind} | – | – | – | – | – | – | skipped: {stats['skipped']} |")
            continue
        stages = ", ".join(f"{k} {v:.2f}" for k, v in stats.get("stages_mean_s", {}).items())
        lines.append(f"| {kind} | {stats['n']} | {_fmt(stats['p50_s'])} | {_fmt(stats['p95_s'])} | "
                     f"{_fmt(stats['mean_s'])} | {_fmt(stats['throughput_per_s'])} | "
                     f"{_fmt(stats['memory']['peak_rss_mib'], 0)} | {stages} |")
    return lines


def _generation_table(generation: dict[str, Any]) -> list[str]:
    single = generation["single"]
    decode = single.get("decode_tokens_per_s")
    lines = [f"single prompt ({generation['prompt_tokens'][0]} prompt tokens), {generation['new_tokens']} new tokens: "
             f"{single['tokens_per_s']:.1f} tokens/s end to end (p50 {single['p50_s']:.3f} s); prefill + first "
             f"token {single['prefill_s']:.3f} s; decode " + (f"{decode:.1f} tokens/s" if decode else "n/a"), "",
             "| batch | unbatched s | batched s | unbatched tok/s | batched tok/s | speedup |",
             "|---|---|---|---|---|---|"]
    for size, row in generation["batching"].items():
        lines.append(f"| {size} | {_fmt(row['unbatched_s'])} | {_fmt(row['batched_s'])} | "
                     f"{_fmt(row['unbatched_tokens_per_s'], 1)} | {_fmt(row['batched_tokens_per_s'], 1)} | "
                     f"{_fmt(row['speedup'], 2)}x |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    out = ["# Reamo performance benchmark", "",
           f"{env['date']} · {env['platform']} · {env['cpu_count']} CPUs · torch {env['torch']} "
           f"({env['torch_threads']} threads) · LLM {env['llm']} ({env['parameters']} parameters) · "
           f"repeats {report['settings']['repeats']}" + (" · quick mode" if report["settings"]["quick"] else "")
           + (f" · load average {env['load_average']}" if env.get("load_average") else ""),
           "", "## Latency per example (CPU)", ""]
    out += _latency_table(report["latency"])
    out += ["", "## Model load", ""]
    load = report["load"]
    if "skipped" in load:
        out.append(f"skipped: {load['skipped']}")
    else:
        out += ["| run | import s | load s | process wall s |", "|---|---|---|---|"]
        for run, row in load.items():
            if run == "in_process_s":
                continue
            if "error" in row:
                out.append(f"| {run} | – | – | error: {row['error']} |")
            else:
                out.append(f"| {run} | {_fmt(row['import_s'])} | {_fmt(row['load_s'])} | "
                           f"{_fmt(row['process_wall_s'])} |")
    if "in_process_s" in load:
        out += ["", f"in this process: {load['in_process_s']:.3f} s"]
    out += ["", "## Throughput on the datasets (CPU)", ""] + render_datasets(report.get("datasets", {}))
    out += ["", "## Generation (CPU)", ""] + _generation_table(report["generation"])
    mem = report["memory"]
    out += ["", "## Memory", "", f"peak RSS {mem['peak_rss_mib']:.0f} MiB, current RSS {mem.get('rss_mib', 0):.0f} MiB"]
    out += ["", "## GPU", ""]
    gpu = report["gpu"]
    if "skipped" in gpu:
        out.append(f"skipped: {gpu['skipped']}")
    else:
        out += [f"device {gpu['device']}, max memory allocated {gpu['max_memory_allocated_mib']} MiB", ""]
        out += _latency_table(gpu["latency"]) + [""] + _generation_table(gpu["generation"])
    return "\n".join(out) + "\n"


def run_bench(
    agent: Any = None,
    out_dir: str | os.PathLike[str] = "reamo-bench",
    repeats: int = 3,
    quick: bool = False,
    model: str = "default",
    max_new_tokens: int | None = None,
    load: bool | None = None,
    gpu: bool = True,
    kinds: tuple[str, ...] = KINDS,
    precision: str = "float32",
) -> dict[str, Any]:
    """Run every measurement, write bench.json + bench.md into `out_dir`, return the JSON-ready dict.

    `agent`: an Agent (else `Agent.from_pretrained(model)` here, timed); `load`: measure subprocess load times
    (default: not in quick mode); `max_new_tokens`: for latency (default the agent's setting; quick: 8) and for
    the tokens/s runs (default 64; quick: 8).
    """
    if quick:
        repeats = 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load = (not quick) if load is None else load
    in_process = None
    if agent is None:
        from reamo.agent import Agent

        started = time.perf_counter()
        agent = Agent.from_pretrained(model, precision=precision)
        in_process = time.perf_counter() - started
    latency_tokens = max_new_tokens or (8 if quick else None)
    generation_tokens = max_new_tokens or (8 if quick else 64)

    report: dict[str, Any] = {
        "settings": {"repeats": repeats, "quick": quick, "model": model, "latency_max_new_tokens": latency_tokens,
                     "generation_new_tokens": generation_tokens, "kinds": list(kinds), "audio_seconds": AUDIO_SECONDS,
                     "precision": agent.settings.precision, "draft_tokens": agent.settings.draft_tokens,
                     "video_seconds": VIDEO_SECONDS},
        "environment": _environment(agent),
    }
    with tempfile.TemporaryDirectory(prefix="reamo-bench-media-") as media:
        # one untimed call per kind first, also in quick mode: it loads the tools' models, which is not latency
        report["latency"] = measure_latency(agent, Path(media), repeats, warmup=True,
                                            max_new_tokens=latency_tokens, kinds=kinds)
        report["generation"] = measure_generation(agent.model, generation_tokens, repeats)
        report["datasets"] = (measure_datasets(agent, n_tweets=8, n_single=2, n_pairs=4, n_sentences=4) if quick
                              else measure_datasets(agent))
        report["gpu"] = (measure_gpu(agent, Path(media), repeats, not quick, generation_tokens) if gpu
                         else {"skipped": "disabled"})
    report["load"] = measure_load(model) if load else {"skipped": "quick mode" if quick else "disabled"}
    if in_process is not None:
        report["load"]["in_process_s"] = in_process
    report["memory"] = memory_now()
    write_atomic(out / "bench.json", json.dumps(report, indent=2))
    write_atomic(out / "bench.md", render_markdown(report))
    return report
