"""Presets: the paper's configurations, and a missing-file check that names every file and where it goes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reamo.errors import CheckpointNotFoundError, ConfigError
from reamo.model import ReamoModel
from reamo.presets import check_files, load_preset, require_files, resolve_preset


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("REAMO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_paper_presets(cache) -> None:
    full = load_preset("reamo-7b", check=False)
    quant = load_preset("reamo-7b-4bit", check=False)
    for config in (full, quant):
        assert config.llm == str(cache / "vicuna-7b-v1.5")
        assert config.encoder.checkpoint == str(cache / "imagebind" / "imagebind_huge.pth")
        assert (config.encoder.vision_embed_dim, config.encoder.vision_num_blocks) == (1280, 32)  # ViT-H
        assert config.projector_type == "mlp2x_gelu"
        assert (config.lora.r, config.lora.alpha, config.lora.target_modules) == (128, 256, "all-linear")
        assert config.chat_template == "vicuna_v1.1"
    assert not full.load_in_4bit and full.dtype == "float16"
    assert quant.load_in_4bit and quant.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="reamo-7b-4bit"):
        load_preset("reamo-13b")


def test_missing_files_are_all_listed_with_their_place(cache) -> None:
    with pytest.raises(CheckpointNotFoundError) as error:
        load_preset("reamo-7b-4bit")
    message = str(error.value)
    for expected in (cache / "vicuna-7b-v1.5" / "config.json", cache / "vicuna-7b-v1.5" / "tokenizer.model",
                     cache / "vicuna-7b-v1.5" / "model-0000x-of-0000y.safetensors",
                     cache / "imagebind" / "imagebind_huge.pth", cache / "sam2" / "sam2.1_hiera_large.pt"):
        assert str(expected) in message
    assert "--llm" in message and "--imagebind-checkpoint" in message and "--sam2-checkpoint" in message
    assert "lmsys/vicuna-7b-v1.5" in message

    # a partly downloaded LLM: the index names two shards, one is there
    llm = cache / "vicuna-7b-v1.5"
    llm.mkdir(parents=True)
    for name in ("config.json", "tokenizer_config.json", "tokenizer.model", "model-00001-of-00002.safetensors"):
        (llm / name).write_text("{}")
    (llm / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    missing = check_files("reamo-7b-4bit")
    assert [(m.component, Path(m.path).name) for m in missing] == [
        ("llm", "model-00002-of-00002.safetensors"), ("imagebind", "imagebind_huge.pth"),
        ("sam2", "sam2.1_hiera_large.pt")]
    assert [m.component for m in check_files("reamo-7b-4bit", tools=False)] == ["llm", "imagebind"]

    # user-given paths replace the defaults; an LLM hub id is left to transformers
    ckpt = cache / "elsewhere.pth"
    ckpt.write_bytes(b"x")
    sam2 = cache / "sam2_l.pt"
    sam2.write_bytes(b"x")
    assert check_files("reamo-7b", {"llm": "lmsys/vicuna-7b-v1.5", "imagebind": ckpt, "sam2": sam2}) == []
    assert resolve_preset("reamo-7b", llm_path="lmsys/vicuna-7b-v1.5").config.llm == "lmsys/vicuna-7b-v1.5"
    with pytest.raises(ConfigError, match="paths keys"):
        check_files("reamo-7b", {"vicuna": "x"})


def test_tiny_preset_builds_a_model(cache, tiny_llm_dir) -> None:
    preset = require_files("tiny", {"llm": tiny_llm_dir})
    config = load_preset("tiny", llm_path=tiny_llm_dir)
    assert config == preset.config
    model = ReamoModel.from_config(config)
    assert model.encoded_modalities == ("image", "video", "audio")
    assert hasattr(model.llm, "peft_config")
    with pytest.raises(CheckpointNotFoundError, match="tiny-llama"):
        load_preset("tiny")


def test_agent_from_preset_checks_memory_before_loading(cache, tiny_llm_dir) -> None:
    from reamo.memory import MemoryBudgetError
    from reamo.presets import agent_from_preset

    with pytest.raises(MemoryBudgetError, match="short by"):
        agent_from_preset("tiny", llm_path=tiny_llm_dir, available_bytes=1024)
    agent = agent_from_preset("tiny", llm_path=tiny_llm_dir, available_bytes=2**30, max_new_tokens=4, few_shot=False)
    assert agent.model.encoded_modalities == ("image", "video", "audio")
    assert agent.extract(text="Rafael Nadal in Mallorca", tasks="ner").text == "Rafael Nadal in Mallorca"
