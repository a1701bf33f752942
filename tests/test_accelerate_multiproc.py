"""The tuning entry point under `accelerate launch` with 2 processes (DDP over gloo on CPU): the multi-GPU path.

`accelerate launch --multi_gpu --num_processes 2 -m reamo.tuning --config ...` is the command a multi-GPU machine
runs (there each process takes one GPU, NCCL instead of gloo); on a machine without CUDA the trainer asks for CPU
and torch.distributed falls back to gloo, so the same launcher, trainer and data sharding are exercised here.
(`accelerate launch --cpu --num_processes 2` would need mpirun; it silently starts one process without it.)
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from reamo.datasets import read_gmner
from reamo.model import ReamoModel
from reamo.tuning import write_instructions
from reamo.tuning.data import gmner_examples


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # ~27 s: two Python processes each import torch + transformers
def test_two_process_tuning_writes_a_loadable_model(tmp_path, tiny_llm_dir, shared_data) -> None:
    examples = gmner_examples(read_gmner("train", limit=8), "train")
    write_instructions(examples, tmp_path / "uie.jsonl")
    config = {
        "stage": 1, "model": {"llm": str(tiny_llm_dir), "encoder": None, "modalities": []},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "data": {"files": [str(tmp_path / "uie.jsonl")]},
        "output_dir": str(tmp_path / "out"), "max_steps": 3, "batch_size": 2, "save_steps": 3, "logging_steps": 1,
        "warmup_steps": 0, "learning_rate": 5e-3, "max_seq_len": 4096, "threads": 1, "progress": False,
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
               "-m", "reamo.tuning", "--config", str(tmp_path / "train.yaml")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    log = [entry for entry in json.loads((tmp_path / "out" / "train_log.json").read_text()) if "loss" in entry]
    assert [e["step"] for e in log] == [1, 2, 3] and all(math.isfinite(e["loss"]) for e in log)
    # 2 processes x batch 2 = 4 of the 8 examples per step: data was sharded across the ranks
    assert log[-1]["epoch"] == 3 * 2 * 2 / len(examples)

    final = tmp_path / "out" / "final"
    adapter = load_file(str(final / "adapter" / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # lora_B starts at zero
    model = ReamoModel.from_pretrained(final)
    assert hasattr(model.llm, "peft_config")
    assert (tmp_path / "out" / "checkpoint-3" / "reamo" / "reamo_config.json").is_file()
