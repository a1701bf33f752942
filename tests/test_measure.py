"""`reamo memory --measure`: a preset's exact shapes with random weights, loaded and measured (tiny preset on CPU)."""

from __future__ import annotations

import json

import torch

from reamo.measure import build_random_llm
from reamo.memory import llm_parameter_counts, llm_architecture
from reamo.model import ReamoConfig
from reamo.presets import TINY_ARCHITECTURE


def test_random_weights_have_the_architectures_exact_shapes(tmp_path, monkeypatch) -> None:
    from safetensors import safe_open
    from transformers import AutoConfig

    import reamo.measure

    monkeypatch.setattr(reamo.measure, "SHARD_BYTES", 100_000)  # several shards, as a 7B gets
    folder = build_random_llm(TINY_ARCHITECTURE, tmp_path / "llm", dtype=torch.float16)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((folder / f).is_file() for f in files)
    total, _, _ = llm_parameter_counts(AutoConfig.from_pretrained(folder))
    found = 0
    for file in files:
        with safe_open(str(folder / file), "pt") as shard:
            for name in shard.keys():
                tensor = shard.get_tensor(name)
                assert tensor.dtype == torch.float16
                assert not name.endswith("norm.weight") or bool((tensor == 1).all())
                found += tensor.numel()
    assert found == total == llm_parameter_counts(llm_architecture(ReamoConfig(llm="x"), TINY_ARCHITECTURE))[0]
    assert index["metadata"]["total_size"] == total * 2


def test_memory_measure_runs_the_tiny_preset_end_to_end(tmp_path, monkeypatch) -> None:
    """What `reamo memory --measure --preset reamo-7b-4bit` does on a GPU, on CPU with the tiny preset: build,
    load through ReamoModel.from_config, the peak at a context, tokens/s per decoding mode, a QLoRA step."""
    from typer.testing import CliRunner

    from reamo.cli import app

    monkeypatch.setenv("REAMO_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "measure.json"
    result = CliRunner().invoke(app, ["memory", "--measure", "--preset", "tiny", "--context", "96", "--batch", "2",
                                      "--new-tokens", "4", "--speed-batch", "3", "--speed-tokens", "6",
                                      "--train-rows", "2", "--train-seq", "48", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "measured tiny with random weights on cpu" in result.output
    report = json.loads(out.read_text())
    assert report["context"] == 96 and report["batch"] == 2 and report["load_gib"] > 0 and report["peak_gib"] > 0
    speed = {(row["decoding"], row["batch"]): row for row in report["speed"]}
    assert set(speed) == {(m, b) for m in ("eager", "static", "compile") for b in (1, 3)}
    assert all(row["error"] is None and row["tokens_per_s"] > 0 for row in speed.values()), speed
    step = report["training"]
    assert step["error"] is None and step["peak_gib"] > 0 and step["estimate_gib"] > 0
    assert step["sliced_logits"] in (True, False)

    if not torch.cuda.is_available():  # a full-size preset is measured on a GPU only
        refused = CliRunner().invoke(app, ["memory", "--measure", "--preset", "reamo-7b-4bit"])
        assert refused.exit_code == 2 and "needs a CUDA GPU" in refused.output
