"""Four-stage tuning end to end on a tiny LLaMA + tiny ImageBind, and the instruction data builders on real data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from safetensors.torch import load_file

from reamo.datasets import MNRE_SHORT_NAMES, read_gmner, read_m2e2, read_mnre
from reamo.errors import ConfigError
from reamo.model import ReamoConfig, ReamoModel
from reamo.model.imagebind_encoder import ImageBindEncoder, ImageBindEncoderConfig
from reamo.protocol import parse
from reamo.tuning import TrainConfig, write_instructions
from reamo.tuning.captions import CaptionPair
from reamo.tuning.data import (
    BuildOptions,
    gmner_boxed,
    gmner_examples,
    balance_relations,
    group_mnre,
    m2e2_examples,
    mnre_examples,
    mnre_pair_examples,
    uie_examples,
)
from reamo.tuning.invocation import COMBINATIONS, invocation_example
from reamo.tuning.trainer import latest_complete_checkpoint, split_micro_batch, train, use_bf16

CONFIGS = Path(__file__).resolve().parents[1] / "tuning" / "configs"
EXACT = BuildOptions(shuffle_labels_prob=0, subset_labels_prob=0, paraphrase_prob=0)


def common(tmp: Path, **update) -> dict:
    """Small, fast settings shared by the stage runs (1 thread: robust on a busy 2-core machine)."""
    return {"max_steps": 3, "batch_size": 4, "save_steps": 3, "logging_steps": 1, "learning_rate": 5e-3,
            "warmup_steps": 0, "max_seq_len": 4096, "threads": 1, "progress": False,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "output_dir": str(tmp), **update}


def losses(output_dir: Path) -> list[float]:
    log = json.loads((output_dir / "train_log.json").read_text())
    return [entry["loss"] for entry in log if "loss" in entry]


def lora_state(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    assert before.keys() == after.keys()
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.fixture(scope="module")
def encoder_config(tmp_path_factory) -> ImageBindEncoderConfig:
    torch.manual_seed(0)
    checkpoint = tmp_path_factory.mktemp("imagebind") / "imagebind_tiny.pth"
    torch.save(ImageBindEncoder(ImageBindEncoderConfig.tiny()).model.state_dict(), checkpoint)
    return ImageBindEncoderConfig.tiny().model_copy(update={"checkpoint": str(checkpoint)})


# ---------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------


def entity_pairs(items) -> list[tuple[str, str]]:
    return sorted((e.text, e.type) for e in items)


def test_gmner_targets_parse_back_to_gold_with_tool_calls_for_boxed_entities(shared_data) -> None:
    gold = read_gmner("train", limit=60)
    built = gmner_examples(gold, "train", stage=3, options=EXACT)
    with_boxes = 0
    for example, item in zip(gold, built):
        assert [m["role"] for m in item.messages] == ["system", "user", "assistant"]
        assert item.media == {"image": example.image} and item.split == "train" and item.stage == 3
        assert "[image attached]" in item.messages[1]["content"] and example.text in item.messages[1]["content"]
        parsed = parse(item.target, strict=True)
        assert entity_pairs(parsed.entities) == entity_pairs(example.gold.entities)
        targets = [c.arguments["target"] for c in parsed.tool_calls]
        assert {c.name for c in parsed.tool_calls} <= {"ImageSegmentation"}
        assert sorted(targets) == sorted(set(gmner_boxed(example)))
        with_boxes += bool(targets)
    assert with_boxes > 5  # real boxes made real tool calls
    stage1 = gmner_examples(gold[:5], "train", stage=1, options=EXACT)
    assert all(not parse(i.target).tool_calls and not i.media for i in stage1)


def test_label_subsets_filter_targets_and_give_none_cases(shared_data) -> None:
    gold = read_gmner("train", limit=200)
    built = gmner_examples(gold, "train", stage=1, options=BuildOptions(subset_labels_prob=0.6, paraphrase_prob=0.5))
    nones = 0
    for example, item in zip(gold, built):
        system = item.messages[0]["content"]
        offered = system.split("with types ")[1].split("\n")[0].split(", ")
        parsed = parse(item.target, strict=True)
        assert all(e.type in offered for e in parsed.entities)
        expected = [e for e in example.gold.entities if e.type in offered]
        assert entity_pairs(parsed.entities) == entity_pairs(expected)
        nones += item.target == "Entities: None"
    assert nones > 10


def test_mnre_and_m2e2_targets(shared_data) -> None:
    pairs = read_mnre("train", limit=80)
    sentences = group_mnre(pairs)
    assert len(sentences) < len(pairs)  # several pairs per sentence are merged
    built = mnre_examples(sentences, "train", options=EXACT)
    targets = [item.target for item in built]
    assert "Relations: None" in targets
    for example, item in zip(sentences, built):
        parsed = parse(item.target, strict=True)
        assert sorted((r.head.text, r.type, r.tail.text) for r in parsed.relations) == sorted(
            (r.head.text, MNRE_SHORT_NAMES[r.type], r.tail.text) for r in example.gold.relations)
    events = [e for e in read_m2e2("train", limit=120) if e.gold.events][:10]
    for example, item in zip(events, m2e2_examples(events, "train", options=EXACT, ner_only_prob=0, ee_only_prob=0)):
        parsed = parse(item.target, strict=True)
        assert entity_pairs(parsed.entities) == entity_pairs(example.gold.entities)
        assert [(e.type, e.trigger.text, [(a.role, a.entity.text) for a in e.arguments]) for e in parsed.events] == [
            (e.type, e.trigger.text, [(a.role, a.entity.text) for a in e.arguments])
            for e in sorted(example.gold.events, key=lambda e: e.trigger.span.start)]


def test_mnre_pair_examples_name_the_pair_and_answer_its_relation_with_short_labels(shared_data) -> None:
    from reamo.datasets import MNRE_SHORT_NAMES, MNRE_SHORT_RELATION_TYPES

    lines = balance_relations(read_mnre("train", limit=400), limit=40, none_fraction=0.5, seed=0)
    assert len(lines) == 40 and sum(1 for e in lines if not e.gold.relations) == 20
    for example, item in zip(lines, mnre_pair_examples(lines, "train", options=EXACT)):
        head, tail = example.meta["head"]["text"], example.meta["tail"]["text"]
        system, user = item.messages[0]["content"], item.messages[1]["content"]
        assert user.endswith(f"Entity pairs: ({head}; {tail})") and "given entity pairs" in system
        assert ", ".join(MNRE_SHORT_RELATION_TYPES) in system and "/per/" not in system
        parsed = parse(item.target, strict=True)
        if example.meta["relation"] == "None":
            assert item.target == "Relations: None"
        else:
            assert [(r.head.text, r.type, r.tail.text) for r in parsed.relations] == [
                (head, MNRE_SHORT_NAMES[example.meta["relation"]], tail)]


def test_text_only_gmner_examples_are_other_tweets_than_the_grounded_ones(shared_data) -> None:
    items = uie_examples("train", {"gmner": 12, "gmner_text": 20}, stage=4, options=EXACT)
    grounded = [i for i in items if i.id.endswith("#s4")]
    text_only = [i for i in items if i.id.endswith("#s1")]
    assert len(grounded) == 12 and len(text_only) == 20
    assert all(not i.media and "[image attached]" not in i.messages[1]["content"] for i in text_only)
    assert {i.id.split("#")[0] for i in grounded}.isdisjoint(i.id.split("#")[0] for i in text_only)


def test_invocation_combinations_render_context_and_calls(shared_data) -> None:
    import random

    example = next(e for e in read_gmner("train", limit=100) if gmner_boxed(e))
    seen = {}
    for combination in COMBINATIONS:
        item = invocation_example(example, combination, "train", random.Random(0), EXACT)
        user = item.messages[1]["content"]
        parsed = parse(item.target, strict=True)
        names = {c.name for c in parsed.tool_calls}
        assert ("Text: " + example.text in user) == ("T" in combination)
        if "A" in combination:
            assert "[audio attached]" in user and "Speech transcript" in user and "AudioSegmentation" in names
        if combination in ("I", "V"):
            assert {"I": "ImageSegmentation", "V": "VideoTracking"}[combination] in names
        assert entity_pairs(parsed.entities) == entity_pairs(example.gold.entities)
        seen[combination] = item
    assert set(seen["T"].media) == set()
    assert set(seen["T+I+A"].media) == {"image", "audio"}


def test_builders_refuse_dev_splits(shared_data) -> None:
    dev = read_gmner("dev", limit=2)
    with pytest.raises(ConfigError, match="dev"):
        gmner_examples(dev, "dev")
    with pytest.raises(ConfigError, match="split"):
        TrainConfig.from_dict({"stage": 1, "output_dir": "x", "data": {"split": "dev"}})


def test_speech_examples_with_espeak(tmp_path, shared_data) -> None:
    from reamo.media import load_audio
    from reamo.tuning.speech import speech_clips, speech_examples

    sentences = read_gmner("train", limit=2)
    items = speech_examples(sentences, "train", cache_dir=tmp_path, options=EXACT)
    assert len(items) == 2
    for example, item in zip(sentences, items):
        audio = load_audio(item.media["audio"])
        assert audio.duration > 1.0
        parsed = parse(item.target, strict=True)
        assert sorted(c.arguments["target"] for c in parsed.tool_calls) == sorted(
            {e.text for e in example.gold.entities})
        assert f"({audio.duration:.1f} s)" in item.messages[1]["content"]
    again = speech_clips(sentences, tmp_path)  # cached: same files, no new synthesis
    assert [c.path for c in again] == [i.media["audio"] for i in items]
    assert len(list(tmp_path.glob("*.wav"))) == 2


# ---------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stage1_uie", "stage2_alignment", "stage3_grounding", "stage4_invocation",
                                  "default_smollm2", "default_smollm2_more", "default_smollm2_third",
                                  "default_smollm2_fourth", "default_smollm2_fifth", "default_smollm2_sixth",
                                  "default_smollm2_writer", "qlora_vicuna7b"])
def test_shipped_configs_load(name: str) -> None:
    config = TrainConfig.from_yaml(CONFIGS / f"{name}.yaml")
    assert config.data.split == "train"


def test_a_recipe_can_keep_the_event_calibration_slice_out(shared_data) -> None:
    from reamo.datasets import m2e2_calibration_held_out
    from reamo.tuning.trainer import build_examples

    slice_texts = {e.text for e in read_m2e2("train") if m2e2_calibration_held_out(e)}
    drawn = {}
    for keep_out in (False, True):
        config = TrainConfig.from_dict({"stage": 4, "output_dir": "x", "data": {
            "m2e2": 600, "invocation": 60, "keep_calibration_out": keep_out, "seed": 3}})
        texts = [e.messages[1]["content"] for e in build_examples(config)]
        drawn[keep_out] = sum(any(t in text for t in slice_texts) for text in texts)
        assert len(texts) == 660
    assert drawn[False] > 30 and drawn[True] == 0


def test_bf16_falls_back_to_float32_on_cpus_without_bfloat16_kernels(caplog) -> None:
    assert use_bf16(True, cuda=False, cpu_has_bf16=True)
    assert use_bf16(True, cuda=True, cpu_has_bf16=False)
    assert not use_bf16(False, cuda=True, cpu_has_bf16=True)
    with caplog.at_level("WARNING", logger="reamo.tuning.trainer"):
        assert not use_bf16(True, cuda=False, cpu_has_bf16=False)
    assert "float32" in caplog.text and "bf16: false" in caplog.text and "grad_accum" in caplog.text


def test_float32_fallback_splits_each_micro_batch_keeping_the_batch_per_step(tmp_path, tiny_llm_dir, shared_data,
                                                                            monkeypatch, caplog) -> None:
    """A bf16 recipe on a CPU without bf16 kernels trains in float32 at half the micro-batch (it would not fit)."""
    from reamo.tuning.invocation import invocation_examples

    assert split_micro_batch(16, 1) == (8, 2) and split_micro_batch(4, 3) == (2, 6)
    assert split_micro_batch(5, 2) == (5, 2)  # odd: splitting would change the batch per step
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_instructions(invocation_examples(read_gmner("train", limit=8), "train"), tmp_path / "data.jsonl")
    raw = {"stage": 4, "model": ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]).model_dump(),
           "data": {"files": [str(tmp_path / "data.jsonl")]}, "bf16": True,
           **common(tmp_path / "run", max_steps=1, save_steps=1, batch_size=4, grad_accum=1)}
    with caplog.at_level("INFO", logger="reamo.tuning.trainer"):
        train(TrainConfig.from_dict(raw))
    assert "2 rows a micro-batch x grad_accum 2" in caplog.text
    state = json.loads((tmp_path / "run" / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2  # rows a micro-batch
    assert state["log_history"][0]["epoch"] == pytest.approx(0.5)  # yet one step took 4 of the 8 rows: 2 x 2


def test_float32_fallback_trains_on_the_same_rows_each_step_as_the_bf16_recipe(tmp_path, tiny_llm_dir, shared_data,
                                                                              monkeypatch) -> None:
    """Splitting the micro-batch must not change which examples make up each optimizer step: a run resumed on a
    machine with the other bf16 support (or a reproduction there) sees the batches the recipe saw."""
    from reamo.tuning.collate import InstructionDataset
    from reamo.tuning.invocation import invocation_examples

    seen: list[int] = []
    original = InstructionDataset.__getitem__
    monkeypatch.setattr(InstructionDataset, "__getitem__", lambda self, i: (seen.append(i), original(self, i))[1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_instructions(invocation_examples(read_gmner("train", limit=12), "train"), tmp_path / "data.jsonl")

    def rows_per_step(bf16_kernels: bool) -> list[list[int]]:
        seen.clear()
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16_kernels)
        raw = {"stage": 4, "model": ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]).model_dump(),
               "data": {"files": [str(tmp_path / "data.jsonl")]}, "bf16": True,
               **common(tmp_path / f"run-{bf16_kernels}", max_steps=2, save_steps=2, batch_size=4, grad_accum=1)}
        train(TrainConfig.from_dict(raw))
        return [sorted(seen[:4]), sorted(seen[4:8])]

    with_kernels, without = rows_per_step(True), rows_per_step(False)
    assert len(set(with_kernels[0] + with_kernels[1])) == 8
    assert without == with_kernels


def test_yaml_errors_name_the_key(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("stage: 1\noutput_dir: out\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rat'"):
        TrainConfig.from_yaml(path)
    path.write_text("stage: 1\noutput_dir: out\ndata:\n  gmner: many\n")
    with pytest.raises(ConfigError, match="data.gmner"):
        TrainConfig.from_yaml(path)
    path.write_text("stage: 7\noutput_dir: out\n")
    with pytest.raises(ConfigError, match="stage"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    path.write_text("stage: 1\noutput_dir: out\n")
    assert TrainConfig.from_yaml(path, stage=2, resume=True).trainable == ["projector"]


# ---------------------------------------------------------------------------------------------------------------
# The four stages, chained, on a tiny model
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_folder(tmp_path_factory) -> Path:
    """Random images and noise audio standing in for real media in the tiny runs."""
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / f"img{index}.png")
        soundfile.write(folder / f"aud{index}.wav", (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
    return folder


def test_four_stages_train_only_their_parts(tmp_path, tiny_llm_dir, encoder_config, media_folder, shared_data
                                            ) -> None:
    model_config = ReamoConfig(llm=str(tiny_llm_dir), encoder=encoder_config, tokens_per_input=2)

    # stage 1: UIE instruction tuning, LoRA only (the projector keeps its initial weights)
    uie = gmner_examples(read_gmner("train", limit=8), "train") + m2e2_examples(read_m2e2("train", limit=8), "train")
    write_instructions(uie, tmp_path / "uie.jsonl")
    config1 = TrainConfig.from_dict({"stage": 1, "model": model_config.model_dump(),
                                     "data": {"files": [str(tmp_path / "uie.jsonl")]},
                                     **common(tmp_path / "s1", save_steps=2)})
    torch.manual_seed(config1.seed)
    from transformers import set_seed

    from reamo.tuning.trainer import build_model
    set_seed(config1.seed)
    initial = build_model(config1)
    initial_projector = {k: v.clone() for k, v in initial.projectors.state_dict().items()}
    initial_lora = {k: v.clone() for k, v in initial.llm.named_parameters() if "lora_" in k}
    del initial
    stage1 = train(config1)
    assert all(math.isfinite(x) for x in losses(tmp_path / "s1")) and len(losses(tmp_path / "s1")) == 3
    assert torch.equal(load_file(str(stage1 / "projector.safetensors"))["image.net.0.weight"],
                       initial_projector["image.net.0.weight"])
    lora1 = lora_state(stage1)
    assert any(v.abs().sum() > 0 for k, v in lora1.items() if "lora_B" in k)  # lora_B starts at zero
    assert len(lora1) == len(initial_lora)
    assert (tmp_path / "s1" / "checkpoint-2" / "reamo" / "adapter").is_dir()

    # stage 2: alignment, projector only (LoRA weights stay exactly as stage 1 left them)
    pairs = [CaptionPair(modality="image", path=str(media_folder / f"img{i}.png"), caption=f"A noisy picture {i}.")
             for i in range(4)]
    pairs += [CaptionPair(modality="audio", path=str(media_folder / f"aud{i}.wav"), caption="Static noise.")
              for i in range(4)]
    config2 = TrainConfig.from_dict({"stage": 2, "model": str(stage1),
                                     "data": {"caption_pairs": [p.model_dump() for p in pairs]},
                                     **common(tmp_path / "s2")})
    stage2 = train(config2)
    assert all(math.isfinite(x) for x in losses(tmp_path / "s2"))
    assert not changed(lora1, lora_state(stage2))
    projector1 = load_file(str(stage1 / "projector.safetensors"))
    projector2 = load_file(str(stage2 / "projector.safetensors"))
    assert changed({k: projector1[k] for k in projector2 if k.startswith(("image", "audio"))},
                   {k: projector2[k] for k in projector2 if k.startswith(("image", "audio"))})
    assert all(torch.equal(projector1[k], projector2[k]) for k in projector2 if k.startswith("video"))  # no video data

    # stage 3: grounding-aware; the GMNER tweet images are resolved under media_root (random stand-ins here)
    tweets = [e for e in read_gmner("train", limit=80) if gmner_boxed(e)][:4]
    for index, tweet in enumerate(tweets):
        (media_folder / tweet.image).write_bytes((media_folder / f"img{index}.png").read_bytes())
    write_instructions(gmner_examples(tweets, "train", stage=3), tmp_path / "grounding.jsonl")
    config3 = TrainConfig.from_dict({"stage": 3, "model": str(stage2),
                                     "data": {"files": [str(tmp_path / "grounding.jsonl")],
                                              "media_root": str(media_folder)},
                                     **common(tmp_path / "s3", max_steps=2)})
    stage3 = train(config3)
    assert all(math.isfinite(x) for x in losses(tmp_path / "s3"))
    assert changed(lora_state(stage2), lora_state(stage3))
    loaded = ReamoModel.from_pretrained(stage3)
    assert loaded.encoded_modalities == ("image", "video", "audio")


def test_stage4_default_style_model_with_speech_and_resume(tmp_path, tiny_llm_dir, shared_data) -> None:
    """No encoder (like the embedded default): media reach the prompt as tool-made text context."""
    from reamo.tuning.invocation import invocation_examples
    from reamo.tuning.speech import speech_examples

    sentences = read_gmner("train", limit=10) + [e for e in read_m2e2("train", limit=200) if e.gold.events][:6]
    items = invocation_examples(sentences, "train")
    items += speech_examples(sentences[:2], "train", cache_dir=tmp_path / "speech")
    assert {i.id.split(":")[-1] for i in items} >= set(COMBINATIONS)
    write_instructions(items, tmp_path / "invocation.jsonl")
    raw = {"stage": 4, "model": ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]).model_dump(),
           "data": {"files": [str(tmp_path / "invocation.jsonl")]},
           **common(tmp_path / "s4", max_steps=2, save_steps=1)}  # batches grouped by prompt, as the default recipe
    final = train(TrainConfig.from_dict(raw))
    assert all(math.isfinite(x) for x in losses(tmp_path / "s4"))
    model = ReamoModel.from_pretrained(final)
    assert hasattr(model.llm, "peft_config") and not model.projectors

    first_run = lora_state(final)
    first_losses = losses(tmp_path / "s4")
    # a kill while checkpoint-2 was being written: resume picks checkpoint-1 and carries on to step 3
    (tmp_path / "s4" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "log_hi')
    assert latest_complete_checkpoint(tmp_path / "s4").name == "checkpoint-1"
    resumed = train(TrainConfig.from_dict({**raw, "max_steps": 3, "resume": True}))
    steps = [e["step"] for e in json.loads((tmp_path / "s4" / "train_log.json").read_text()) if "loss" in e]
    assert steps == [1, 2, 3]  # step 1 from the checkpoint's history, 2 and 3 trained again after the resume
    # the resumed step 2 repeats the first run's step 2 exactly: weights, optimizer and data order were restored
    assert losses(tmp_path / "s4")[1] == pytest.approx(first_losses[1], rel=1e-5)
    assert changed(first_run, lora_state(resumed))


def test_shared_prefix_training_gives_the_plain_loss_and_gradients(tiny_llm_dir, shared_data) -> None:
    from reamo.model import LoraSettings
    from reamo.tuning.collate import collate, shared_prefix_length, tokenize_example
    from reamo.tuning.trainer import ReamoForTraining

    torch.manual_seed(0)
    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]))
    model.add_lora(LoraSettings(r=4, alpha=8, dropout=0.0))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
        if "lora_B" in name:  # B starts at zero: give A a gradient too
            torch.nn.init.normal_(parameter, std=0.1)
    items = gmner_examples(read_gmner("train", limit=3), "train", options=EXACT)
    batch = collate([dict(zip(("input_ids", "labels"), tokenize_example(model, i)), media={}) for i in items])
    rows = [batch["input_ids"][r, :n].tolist() for r, n in enumerate(batch["lengths"].tolist())]
    labels = [batch["labels"][r, :n].tolist() for r, n in enumerate(batch["lengths"].tolist())]
    shared = shared_prefix_length(rows, labels)
    assert shared > 20  # the system prompt and the start of the user turn

    def loss_and_grads(share: bool) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = ReamoForTraining(model, share_prefix=share)(**batch)["loss"]
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain_loss, plain = loss_and_grads(False)
    shared_loss, grads = loss_and_grads(True)
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-6)


def test_shared_prefix_stops_before_targets_and_media() -> None:
    from reamo.tuning.collate import IGNORE, shared_prefix_length

    rows = [list(range(1, 21)) + [30, 31], list(range(1, 21)) + [40]]
    labels = [[IGNORE] * 20 + [30, 31], [IGNORE] * 20 + [40]]
    assert shared_prefix_length(rows, labels) == 19  # position 19 predicts the first target: it stays in the rows
    assert shared_prefix_length(rows, [[IGNORE] * 12 + [1] * 10, labels[1]]) == 11
    with_media = [r[:10] + [-200] + r[11:] for r in rows]
    assert shared_prefix_length(with_media, labels) == 10
    assert shared_prefix_length(rows, labels, minimum=25) == 0
    assert shared_prefix_length(rows[:1], labels[:1]) == 0


def test_prefix_grouped_sampler_covers_each_example_once_in_batches_of_one_prompt() -> None:
    from reamo.tuning.collate import PrefixGroupedSampler

    groups = ["a"] * 10 + ["b"] * 7 + ["c"] * 2
    sampler = PrefixGroupedSampler(groups, batch_size=4, seed=1)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(19)) and len(list(sampler)) == 19
    assert [len(b) for b in batches[:-1]] == [4] * 4 and len(batches[-1]) == 3  # a short batch only at the end
    assert sum(len({groups[i] for i in b}) == 1 for b in batches) >= 3  # a, a, b: whole batches of one prompt
    assert sampler.batches() == batches  # deterministic for a seed and epoch (resume skips the same batches)
    orders = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.add(tuple(sampler))
    assert len(orders) > 1  # a new order each epoch


def test_share_prefix_and_group_by_length_are_exclusive(tmp_path) -> None:
    with pytest.raises(ConfigError, match="share_prefix"):
        TrainConfig.from_dict({"stage": 1, "output_dir": str(tmp_path), "group_by_length": True})
    assert TrainConfig.from_dict({"stage": 1, "output_dir": str(tmp_path), "group_by_length": True,
                                  "share_prefix": False}).group_by_length


def test_mnre_calibration_sentences_are_never_tuned_on(shared_data) -> None:
    from reamo.datasets import mnre_calibration_held_out, read_mnre_for_tuning

    lines = read_mnre("train")
    held = {e.text for e in lines if mnre_calibration_held_out(e)}
    assert 0.05 < len(held) / len({e.text for e in lines}) < 0.15
    tuned = read_mnre_for_tuning("train")
    assert len(tuned) + sum(mnre_calibration_held_out(e) for e in lines) == len(lines)
    items = uie_examples("train", {"mnre_pairs": 300, "mnre": 100}, options=EXACT)
    texts = {i.messages[1]["content"].split("\n")[0].removeprefix("Text: ") for i in items}
    assert texts and not texts & held


def test_exported_adapter_is_bfloat16_loads_and_keeps_the_old_one_on_failure(tmp_path, tiny_llm_dir) -> None:
    from peft import PeftModel

    from reamo.errors import CheckpointNotFoundError
    from reamo.model import LoraSettings
    from reamo.tuning.export import export_adapter

    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]))
    model.add_lora(LoraSettings(r=4, alpha=8))
    for name, parameter in model.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    folder = model.save_pretrained(tmp_path / "final")
    target = export_adapter(folder, tmp_path / "shipped")
    weights = load_file(str(target / "adapter_model.safetensors"))
    assert weights and all(w.dtype == torch.bfloat16 for w in weights.values())
    shipped_config = json.loads((target / "adapter_config.json").read_text())
    assert shipped_config["base_model_name_or_path"] == "smollm2-135m-instruct"
    modules = shipped_config["target_modules"]
    assert len(modules) > 1 and modules == sorted(modules)  # re-exports of the same layout write the same file
    original = lora_state(folder)
    for key, value in weights.items():
        torch.testing.assert_close(value.float(), original[key], rtol=1e-2, atol=1e-3)
    base = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[])).llm
    loaded = PeftModel.from_pretrained(base, str(target), is_trainable=False)
    assert {p.dtype for n, p in loaded.named_parameters() if "lora_" in n} == {torch.float32}
    with pytest.raises(CheckpointNotFoundError, match="no LoRA adapter"):
        export_adapter(tmp_path / "missing", target)
    assert (target / "adapter_model.safetensors").is_file()  # the shipped adapter is untouched


def test_freed_training_memory_goes_back_to_the_os() -> None:
    import ctypes
    import sys

    import psutil

    from reamo.tuning.trainer import release_freed_memory

    if not sys.platform.startswith("linux"):
        assert release_freed_memory() in (True, False)
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD high: glibc keeps freed pages, only release_freed_memory() returns them
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: these blocks come from the heap, not from mmap
    try:
        process = psutil.Process()
        blocks = [ctypes.create_string_buffer(1 << 20) for _ in range(300)]  # 300 MiB on the heap, touched
        held = process.memory_info().rss
        del blocks
        assert release_freed_memory()
        assert process.memory_info().rss < held - (200 << 20)
    finally:
        libc.mallopt(-1, 128 * 1024)
        libc.mallopt(-3, 128 * 1024)


def test_stage2_on_a_model_without_encoder_is_a_clear_error(tmp_path, tiny_llm_dir, media_folder) -> None:
    config = TrainConfig.from_dict({
        "stage": 2, "model": ReamoConfig(llm=str(tiny_llm_dir), modalities=[]).model_dump(),
        "data": {"caption_pairs": [{"modality": "image", "path": str(media_folder / "img0.png"), "caption": "x"}]},
        **common(tmp_path / "s2x")})
    with pytest.raises(ConfigError, match="nothing to train"):
        train(config)


def test_adapter_soup_adds_exactly_the_weighted_sum_of_what_each_adapter_adds(tmp_path, tiny_llm_dir) -> None:
    from typer.testing import CliRunner

    from reamo.cli import app
    from reamo.model import LoraSettings
    from reamo.tuning.soup import soup_adapters

    def tuned(seed: int, r: int, alpha: int) -> Path:
        model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]))
        model.add_lora(LoraSettings(r=r, alpha=alpha))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.llm.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        return model.save_pretrained(tmp_path / f"run{seed}" / "final")

    def merged(folder: Path) -> dict[str, torch.Tensor]:
        model = ReamoModel.from_pretrained(folder)
        llm = model.llm.merge_and_unload() if hasattr(model.llm, "merge_and_unload") else model.llm
        return {name: value.detach().clone() for name, value in llm.state_dict().items() if "proj" in name}

    base = {name: value.detach().clone() for name, value in
            ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[])).llm
            .state_dict().items() if "proj" in name}
    first, second = tuned(1, r=4, alpha=8), tuned(2, r=2, alpha=8)  # different ranks and scalings
    (first / "settings.json").write_text('{"pair_none_bias": 0.5}')  # margins set on the first adapter alone
    target = soup_adapters([(first, 0.3), (second, -0.7)], tmp_path / "soup", dtype="float32")
    assert (target / "reamo_config.json").is_file() and not (target / "settings.json").exists()
    assert json.loads((target / "adapter" / "adapter_config.json").read_text())["r"] == 6
    one, two, soup = merged(first), merged(second), merged(target)
    changed = 0
    for name, weight in soup.items():
        expected = base[name] + 0.3 * (one[name] - base[name]) - 0.7 * (two[name] - base[name])
        torch.testing.assert_close(weight, expected, rtol=1e-4, atol=1e-5)
        changed += not torch.equal(one[name], base[name])
    assert changed  # the adapters did change the weights the soup is checked on

    runner = CliRunner()
    result = runner.invoke(app, ["soup-adapters", str(tmp_path / "cli"), f"{first}=0.5", str(second)])
    assert result.exit_code == 2 and "FOLDER=WEIGHT" in result.output
    assert not (tmp_path / "cli").exists()  # nothing half-written
    result = runner.invoke(app, ["soup-adapters", str(tmp_path / "cli"), f"{first}=0.5", f"{tmp_path / 'none'}=0.5"])
    assert result.exit_code == 2 and "no LoRA adapter" in result.output and not (tmp_path / "cli").exists()
    result = runner.invoke(app, ["soup-adapters", str(tmp_path / "cli"), f"{first}=0.5", f"{second}=0.5"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "adapter" / "adapter_model.safetensors").is_file()
