"""200 requests through one agent from 8 threads: results unmixed, nothing fails, memory bounded."""

from __future__ import annotations

import pytest

from reamo.agent import Agent
from reamo.eval.soak import run_soak
from reamo.model import ReamoConfig, ReamoModel
from reamo.tools.registry import ToolRegistry


@pytest.mark.slow
def test_200_requests_from_8_threads(tiny_llm_dir) -> None:
    agent = Agent(ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir))), registry=ToolRegistry())
    report = run_soak(agent, requests=200, threads=8, max_new_tokens=4)
    print(report.model_dump_json(indent=1))  # the figures for the record (pytest -s shows them)
    assert report.failures == 0 and report.mixed_results == 0
    # a leak of even 1 MB per request would show as ~180 MB here
    assert report.growth_after_warmup_mb < 100, report
