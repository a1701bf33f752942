"""Performance benchmark: statistics, synthetic media, and a quick run writing bench.json / bench.md."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from reamo.eval.bench import KINDS, bench_audio, bench_video, latency_stats, run_bench

from reamo.agent import Agent, AgentSettings
from reamo.model import ReamoConfig, ReamoModel


def test_latency_stats() -> None:
    stats = latency_stats([1.0, 2.0, 3.0, 4.0])
    assert stats["p50_s"] == pytest.approx(2.5)
    assert stats["p95_s"] == pytest.approx(3.85)
    assert stats["throughput_per_s"] == pytest.approx(0.4)
    assert latency_stats([]) == {"n": 0}


def test_synthetic_media_lengths(tmp_path) -> None:
    audio = bench_audio(tmp_path)
    assert audio.shape == (160000,) and audio.dtype == np.float32 and np.abs(audio).max() > 0.05
    video = bench_video(tmp_path)
    with av.open(str(video)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 50


@pytest.mark.slow
def test_quick_bench_writes_json_with_expected_keys(tiny_llm_dir, tmp_path) -> None:
    agent = Agent(ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir))), settings=AgentSettings(few_shot=False))
    report = run_bench(agent, tmp_path, quick=True)
    saved = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))
    assert set(saved) == {"settings", "environment", "latency", "generation", "datasets", "gpu", "load", "memory"}
    assert set(saved["latency"]) == set(KINDS)
    for kind in KINDS:
        stats = saved["latency"][kind]
        assert stats["n"] == 1 and stats["p50_s"] > 0 and stats["memory"]["peak_rss_mib"] > 0, kind
        assert "generate" in stats["stages_mean_s"]
    generation = saved["generation"]
    assert generation["single"]["tokens_per_s"] > 0 and set(generation["batching"]) == {"1", "4"}
    assert generation["batching"]["4"]["batched_tokens_per_s"] > 0
    assert saved["load"] == {"skipped": "quick mode"}
    assert "skipped" in saved["gpu"] or saved["gpu"]["generation"]["single"]["tokens_per_s"] > 0
    markdown = (tmp_path / "bench.md").read_text(encoding="utf-8")
    assert "| text+audio |" in markdown and "## Generation (CPU)" in markdown
    datasets = saved["datasets"]
    for name, unit in (("gmner", "tweets_per_s"), ("mnre", "pairs_per_s"), ("m2e2", "sentences_per_s")):
        assert "skipped" in datasets[name] or (datasets[name]["n"] == (8 if name == "gmner" else 4)
                                               and datasets[name][unit] > 0), name
    if "skipped" not in datasets["gmner"]:
        assert datasets["gmner"]["single"]["p50_s"] > 0 and "generate" in datasets["gmner"]["stages_s"]
    assert "## Throughput on the datasets (CPU)" in markdown
