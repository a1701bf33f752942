"""Faults during training and batch prediction: SIGKILL mid-run, resume, unwritable output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from reamo.datasets import read_gmner
from reamo.errors import ConfigError
from reamo.model import ReamoConfig, ReamoModel
from reamo.tuning import TrainConfig, write_instructions
from reamo.tuning.invocation import invocation_examples
from reamo.tuning.trainer import latest_complete_checkpoint, train


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_trainer_killed_with_sigkill_resumes_to_the_same_step_count(tmp_path, tiny_llm_dir, shared_data) -> None:
    items = invocation_examples(read_gmner("train", limit=24), "train")
    write_instructions(items, tmp_path / "data.jsonl")
    out = tmp_path / "run"
    config = {
        "stage": 4, "model": ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]).model_dump(),
        "data": {"files": [str(tmp_path / "data.jsonl")]}, "output_dir": str(out),
        "max_steps": 30, "batch_size": 2, "save_steps": 2, "save_total_limit": 3, "logging_steps": 1,
        "learning_rate": 1e-3, "warmup_steps": 0, "max_seq_len": 4096, "threads": 1, "progress": False,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "reamo.tuning", "--config", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: latest_complete_checkpoint(out) is not None, 300, "a first checkpoint")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "final").exists(), "the run finished before the kill; the test proves nothing"
    killed_at = int(latest_complete_checkpoint(out).name.split("-")[1])
    assert 0 < killed_at < 30

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [e["step"] for e in json.loads((out / "train_log.json").read_text()) if "loss" in e]
    assert steps == list(range(1, 31))  # same number of steps as an uninterrupted run, none twice
    model = ReamoModel.from_pretrained(out / "final")
    assert hasattr(model.llm, "peft_config")
    assert not [p for p in out.iterdir() if p.name.startswith(".final")]  # no half-written model left


def test_unwritable_output_folder_is_a_clear_error_before_training(tmp_path, tiny_llm_dir) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = TrainConfig.from_dict({
        "stage": 1, "model": ReamoConfig(llm=str(tiny_llm_dir)).model_dump(), "output_dir": str(blocker / "run"),
        "data": {"gmner": 2}, "max_steps": 1,
    })
    with pytest.raises(ConfigError, match="cannot be written"):
        train(config)


@pytest.mark.slow
def test_batch_prediction_killed_mid_run_resumes_without_duplicates(tmp_path, shared_data) -> None:
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "reamo.cli", "eval", "gmner:dev", "--model", "spacy", "--limit", "400",
               "--no-baselines", "--out", str(out)]
    predictions = out / "predictions" / "spacy.jsonl"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: predictions.is_file() and predictions.stat().st_size > 20_000, 300, "some predictions")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    partial = predictions.read_text().splitlines()
    assert 0 < len(partial) < 400, "the run finished before the kill; the test proves nothing"
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [json.loads(line)["id"] for line in predictions.read_text().splitlines()]
    assert len(ids) == 400 and len(set(ids)) == 400
    assert (out / "report.md").is_file()
