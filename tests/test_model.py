"""Tiny random LLaMA + LoRA + projector + tiny ImageBind, end to end: splice media, generate, save, load."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from reamo.errors import CheckpointNotFoundError, ConfigError
from reamo.media import LoadedAudio, LoadedImage, LoadedVideo
from reamo.model import LoraSettings, ReamoConfig, ReamoModel
from reamo.model.imagebind_encoder import ImageBindEncoder, ImageBindEncoderConfig
from reamo.model.modeling_reamo import PLACEHOLDER_IDS


@pytest.fixture(scope="module")
def tiny_model(tiny_llm_dir, tmp_path_factory) -> ReamoModel:
    torch.manual_seed(0)
    checkpoint = tmp_path_factory.mktemp("imagebind") / "imagebind_tiny.pth"
    torch.save(ImageBindEncoder(ImageBindEncoderConfig.tiny()).model.state_dict(), checkpoint)
    config = ReamoConfig(
        llm=str(tiny_llm_dir),
        encoder=ImageBindEncoderConfig.tiny().model_copy(update={"checkpoint": str(checkpoint)}),
        tokens_per_input=2,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    )
    return ReamoModel.from_config(config)


def media_tensors(model: ReamoModel) -> dict[str, list[torch.Tensor]]:
    rng = np.random.default_rng(0)
    image = LoadedImage(name="img", array=rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    audio = LoadedAudio(name="aud", samples=(rng.standard_normal(16000 * 3) * 0.1).astype(np.float32), sample_rate=16000)
    video = LoadedVideo(
        name="vid", frames=rng.integers(0, 255, (6, 120, 160, 3), dtype=np.uint8), timestamps=[i * 0.5 for i in range(6)],
        frame_indices=list(range(0, 72, 12)), fps=24.0, duration=3.0,
    )
    enc = model.encoder
    assert enc.preprocess_image(image).shape == (3, 224, 224)
    assert enc.preprocess_audio(audio).shape == (3, 1, 128, 204)
    assert enc.preprocess_video(video).shape == (5, 3, 2, 224, 224)
    return {
        "image": [model.encode_media("image", enc.preprocess_image(image)[None])[0]],
        "audio": [model.encode_media("audio", enc.preprocess_audio(audio)[None])[0]],
        "video": [model.encode_media("video", enc.preprocess_video(video)[None])[0]],
    }


def test_lora_and_projector_are_the_trainable_parts(tiny_model: ReamoModel) -> None:
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    assert all("lora_" in n or n.startswith("projectors.") for n in trainable)
    assert any(n.startswith("projectors.image") for n in trainable)
    assert not any(n.startswith("encoder.") for n in trainable)


def test_media_are_spliced_at_placeholders_and_generate(tiny_model: ReamoModel) -> None:
    media = media_tensors(tiny_model)
    assert media["image"][0].shape == (2, tiny_model.llm.get_input_embeddings().embedding_dim)
    prompt = "USER: <image>\n<audio>\n<video>\nWho is Rafael Nadal? ASSISTANT:"
    ids = tiny_model.tokenize_with_placeholders(prompt)
    assert [i for i in ids if i < 0] == [PLACEHOLDER_IDS["image"], PLACEHOLDER_IDS["audio"], PLACEHOLDER_IDS["video"]]
    embeds = tiny_model.embed(ids, media)
    assert embeds.shape[0] == len(ids) - 3 + 3 * 2  # each placeholder became tokens_per_input embeddings
    position = ids.index(PLACEHOLDER_IDS["image"])
    assert torch.allclose(embeds[position : position + 2], media["image"][0])
    out = tiny_model.generate([prompt, "USER: hi ASSISTANT:"], [media, {}], max_new_tokens=5)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    # the media change what the model sees: logits differ with another image
    other = {**media, "image": [media["image"][0] + 1.0]}
    e1, m1 = tiny_model.batch_embeds([tiny_model.embed(ids, media)])
    e2, m2 = tiny_model.batch_embeds([tiny_model.embed(ids, other)])
    assert not torch.allclose(tiny_model(e1, m1).logits, tiny_model(e2, m2).logits)


def test_too_many_placeholders_is_a_clear_error(tiny_model: ReamoModel) -> None:
    ids = tiny_model.tokenize_with_placeholders("<image><image>")
    with pytest.raises(ConfigError, match="more <image> placeholders"):
        tiny_model.embed(ids, {"image": []})


def test_forward_with_labels_gives_a_loss_that_backpropagates_to_lora_and_projector(tiny_model: ReamoModel) -> None:
    media = media_tensors(tiny_model)
    ids = tiny_model.tokenize_with_placeholders("<image> Entities: (Rafael Nadal, PER)")
    embeds, mask = tiny_model.batch_embeds([tiny_model.embed(ids, media)], left_pad=False)
    labels = torch.full(mask.shape, -100)
    labels[0, -5:] = 1
    loss = tiny_model(embeds, mask, labels).loss
    loss.backward()
    grads = [p.grad for n, p in tiny_model.named_parameters() if p.requires_grad and "projectors.image" in n]
    assert loss.item() > 0 and any(g is not None and g.abs().sum() > 0 for g in grads)
    tiny_model.zero_grad()


def test_loss_on_target_logits_only_equals_the_full_lm_loss(tiny_model: ReamoModel) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (3, 24))
    embeds = tiny_model.llm.get_input_embeddings()(ids)
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[2, 18:] = 0  # a right-padded row
    labels = torch.full((3, 24), -100)
    labels[0, 10:16], labels[1, 2:24], labels[2, 12:18] = ids[0, 10:16], ids[1, 2:24], ids[2, 12:18]
    with torch.no_grad():
        sliced = tiny_model(embeds, mask, labels).loss
        full = tiny_model.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    assert sliced.item() == pytest.approx(full.item(), rel=1e-5)
    # the fallback where the installed transformers cannot keep logits by a boolean mask gives the same loss
    supported = tiny_model._slices_logits()
    try:
        tiny_model._logits_mask_support = False
        with torch.no_grad():
            fallback = tiny_model(embeds, mask, labels).loss
    finally:
        tiny_model._logits_mask_support = supported
    assert fallback.item() == pytest.approx(sliced.item(), rel=1e-5)


def logit_rows(model: ReamoModel) -> tuple[list[tuple[int, ...]], Any]:
    """Shapes of every logits tensor the LM's output head computes while the returned hook is registered."""
    shapes: list[tuple[int, ...]] = []
    hook = model.llm.get_output_embeddings().register_forward_hook(
        lambda module, args, output: shapes.append(tuple(output.shape)))
    return shapes, hook


def test_the_logits_mask_probe_tells_which_transformers_can_slice(tiny_llm_dir, monkeypatch) -> None:
    """transformers 5.0-5.17 take `logits_to_keep` but fail on a boolean 2-D mask (IndexError): the probe asks the
    installed LM, and where it says no, training computes all logits and the LM's own loss (same value, no crash)."""
    import inspect

    from transformers.models.llama import modeling_llama

    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]))
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 12))
    embeds = model.llm.get_input_embeddings()(ids).detach()
    mask = torch.ones(2, 12, dtype=torch.long)
    labels = torch.full((2, 12), -100)
    labels[0, 4:9], labels[1, 6:12] = ids[0, 4:9], ids[1, 6:12]
    with torch.no_grad():
        full = model.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    try:  # what the installed LM really does with a boolean mask: the probe must say the same
        with torch.no_grad():
            model.llm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=labels != -100)
        works = True
    except IndexError:
        works = False
    assert model._slices_logits() is works
    shapes, hook = logit_rows(model)
    with torch.no_grad():
        loss = model(embeds, mask, labels).loss
    hook.remove()
    assert loss.item() == pytest.approx(full.item(), rel=1e-5)
    targets = int((labels[:, 1:] != -100).sum())
    assert shapes[-1][:-1] == ((targets,) if works else (2, 12))  # only the target positions' logits when it can

    # the slicing of transformers 5.0-5.17, whatever is installed: the probe says no and training still runs
    def old_slicing(hidden_states: torch.Tensor, logits_to_keep: Any) -> torch.Tensor:
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden_states[:, keep, :]

    monkeypatch.setattr(modeling_llama, "slice_logits_to_keep", old_slicing, raising=False)
    old = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]))
    patched = "slice_logits_to_keep" in inspect.unwrap(modeling_llama.LlamaForCausalLM.forward).__code__.co_names
    assert patched or not works  # either the old slicing is patched in, or the installed version slices that way
    assert old._slices_logits() is False
    with torch.no_grad():
        assert old(embeds, mask, labels).loss.item() == pytest.approx(full.item(), rel=1e-5)


def test_generation_prefill_keeps_one_position_of_logits(tiny_llm_dir) -> None:
    """A long prompt's prefill projects only its last position onto the vocabulary (transformers' generate passes
    logits_to_keep=1): logits for every prompt position were the largest prefill tensor at a 2k context."""
    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]))
    prompts = ["USER: " + "Rafael Nadal gets engaged to Mery Perello in Mallorca. " * 6 + "ASSISTANT:", "USER: hi"]
    assert len(model.tokenize_with_placeholders(prompts[0])) > 60
    shapes, hook = logit_rows(model)
    try:
        model.generate(prompts, max_new_tokens=4, min_new_tokens=4)
    finally:
        hook.remove()
    vocab = model.llm.get_output_embeddings().out_features
    # one position per row, at the prefill as at every step (rows may be run in groups, e.g. by shared prefix)
    assert shapes and all(len(shape) == 3 and shape[0] <= 2 and shape[1:] == (1, vocab) for shape in shapes), shapes


def test_scoring_computes_logits_for_the_continuations_only(tiny_llm_dir) -> None:
    """`continuation_logprobs` projects the continuations' positions (plus the prompt's last, which predicts their
    first token), never the prompt's: a long prompt with short candidates costs no prompt-length logits."""
    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[]))
    prompt = "USER: " + "Rafael Nadal gets engaged to Mery Perello in Mallorca. " * 6 + "ASSISTANT:"
    continuations = ["Nadal", "Mery Perello", "Mallorca, LOC"]
    answers = [len(model.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in continuations]
    shapes, hook = logit_rows(model)
    try:
        scores = model.continuation_logprobs(prompt, None, continuations)
    finally:
        hook.remove()
    assert len(scores) == 3 and all(s < 0 for s in scores)
    longest = 1 + max(answers)  # the prompt's last position + each continuation's own tokens
    assert len(model.tokenize_with_placeholders(prompt)) > 4 * longest
    # at most one row of logits per continuation position (padded to the longest) + the prompt's last position
    computed = sum(torch.Size(shape[:-1]).numel() for shape in shapes)
    assert shapes and computed <= len(continuations) * longest + 1, shapes


def test_decoding_modes_give_the_same_greedy_text(tiny_llm_dir, monkeypatch) -> None:
    """"static" (preallocated KV cache) and "compile" (static cache + transformers' compiled decoding, CUDA only;
    elsewhere it decodes as "static") are settings of the LM's generation config; "eager" leaves it as loaded."""
    from reamo.model.modeling_reamo import _configure_decoding

    config = ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[])
    model = ReamoModel.from_config(config)
    prompts = ["USER: Rafael Nadal gets engaged to Mery Perello in Mallorca. ASSISTANT:", "USER: hi ASSISTANT:"]
    assert model.llm.generation_config.cache_implementation is None
    eager = model.generate(prompts, max_new_tokens=6)
    for mode in ("static", "compile"):
        _configure_decoding(model.llm, mode)
        assert model.llm.generation_config.cache_implementation == "static"
        assert (model.llm.generation_config.compile_config is not None) == (mode == "compile")
        assert model.generate(prompts, max_new_tokens=6) == eager
    monkeypatch.setenv("REAMO_DECODING", "static")
    assert ReamoModel.from_config(config).llm.generation_config.cache_implementation == "static"
    monkeypatch.setenv("REAMO_DECODING", "fast")
    with pytest.raises(ConfigError, match="eager, static, compile"):
        ReamoModel.from_config(config)


def test_save_then_load_is_identity(tiny_model: ReamoModel, tmp_path) -> None:
    with torch.no_grad():  # make the adapter non-trivial (LoRA B starts at zero)
        for name, param in tiny_model.llm.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
    folder = tiny_model.save_pretrained(tmp_path / "saved")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert "projector.safetensors" in files and "adapter/adapter_model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    loaded = ReamoModel.from_pretrained(folder)
    ids = tiny_model.tokenize_with_placeholders("<image> Who? ASSISTANT:")
    media = media_tensors(tiny_model)
    media_loaded = {"image": [loaded.projectors["image"](loaded.encoder("image", torch.zeros(1, 3, 224, 224)))[0]]}
    media_orig = {"image": [tiny_model.projectors["image"](tiny_model.encoder("image", torch.zeros(1, 3, 224, 224)))[0]]}
    assert torch.allclose(media_loaded["image"][0], media_orig["image"][0])
    with torch.no_grad():
        a = tiny_model(*tiny_model.batch_embeds([tiny_model.embed(ids, media_orig)])).logits
        b = loaded(*loaded.batch_embeds([loaded.embed(ids, media_loaded)])).logits
    assert torch.allclose(a, b, atol=1e-5)
    del media


def test_saving_over_an_existing_folder_replaces_it_whole(tiny_model: ReamoModel, tmp_path) -> None:
    target = tmp_path / "m"
    tiny_model.save_pretrained(target)
    (target / "stale.txt").write_text("old")
    tiny_model.save_pretrained(target)
    assert not (target / "stale.txt").exists() and (target / "reamo_config.json").is_file()


def test_missing_checkpoints_name_the_file_and_the_fix(tmp_path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="reamo_config.json"):
        ReamoModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="imagebind_huge.pth"):
        ImageBindEncoder(ImageBindEncoderConfig.tiny().model_copy(update={"checkpoint": str(tmp_path / "nope.pth")}))
    with pytest.raises(CheckpointNotFoundError, match="LLM not found"):
        ReamoModel.from_config(ReamoConfig(llm=str(tmp_path / "no-such-llm")))


def test_imagebind_checkpoint_loads_with_weights_only(tmp_path) -> None:
    config = ImageBindEncoderConfig.tiny()
    source = ImageBindEncoder(config)
    checkpoint = tmp_path / "ib.pth"
    torch.save(source.model.state_dict(), checkpoint)
    loaded = ImageBindEncoder(config.model_copy(update={"checkpoint": str(checkpoint)}))
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(source("image", x), loaded("image", x))


def test_4bit_nf4_path(tmp_path) -> None:
    """NF4 + double quantisation through bitsandbytes; on CUDA when present, else on CPU (bitsandbytes >= 0.45).
    Layers are 64 wide: bitsandbytes' CPU kernels (0.50) pack weights in blocks of 64 input features."""
    from conftest import build_tiny_llm

    llm_dir = build_tiny_llm(tmp_path / "tiny-llama-64", hidden_size=64)
    model = ReamoModel.from_config(ReamoConfig(llm=str(llm_dir), load_in_4bit=True, lora=LoraSettings(r=4)))
    linear4bit = [m for m in model.llm.modules() if type(m).__name__ == "Linear4bit"]
    assert linear4bit and linear4bit[0].weight.quant_type == "nf4"
    assert any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert len(model.generate(["USER: hi ASSISTANT:"], max_new_tokens=3)) == 1


def test_4bit_inference_is_not_prepared_for_training(tmp_path) -> None:
    """peft's prepare_model_for_kbit_training upcasts the non-quantized weights to float32 (and with them the
    residual stream and the KV cache) and turns gradient checkpointing on: only the trainer asks for it."""
    from conftest import build_tiny_llm

    llm_dir = build_tiny_llm(tmp_path / "tiny-llama-64", hidden_size=64)
    config = ReamoConfig(llm=str(llm_dir), load_in_4bit=True, dtype="bfloat16", encoder=None, modalities=[],
                         lora=LoraSettings(r=4))
    inference = ReamoModel.from_config(config)
    assert inference.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert not inference.llm.is_gradient_checkpointing
    assert len(inference.generate(["USER: hi ASSISTANT:"], max_new_tokens=2)) == 1
    training = ReamoModel.from_config(config, training=True)
    assert training.llm.get_input_embeddings().weight.dtype == torch.float32
    assert training.llm.is_gradient_checkpointing
    # a saved adapter loads frozen, and prepared for k-bit training only when asked
    folder = inference.save_pretrained(tmp_path / "saved")
    loaded = ReamoModel.from_pretrained(folder)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert ReamoModel.from_pretrained(folder, training=True).llm.get_input_embeddings().weight.dtype == torch.float32


def test_repetition_stop_ends_loops_only(tiny_llm_dir) -> None:
    from transformers import AutoTokenizer

    from reamo.model.modeling_reamo import RepetitionStop

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llm_dir))
    stop = RepetitionStop(tokenizer)
    texts = [
        "Entities: (state, GPE)(state, GPE)(state, GPE)",
        "Entities: (Rafael Nadal, PER)(Mery Perello, PER)(Mallorca, LOC)",
        "<Module>AudioSegmentation</Module><Instruction>Nadal</Instruction>\\n"
        "<Module>AudioSegmentation</Module><Instruction>Perello</Instruction>",
    ]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    longest = max(len(i) for i in ids)
    batch = torch.tensor([[tokenizer.pad_token_id] * (longest - len(i)) + i for i in ids])
    assert stop(batch, None).tolist() == [True, False, False]


def test_scores_and_answer_start_states_with_media_equal_a_plain_forward(tiny_model: ReamoModel) -> None:
    """Items whose prompt holds a media placeholder run alone (their embeddings differ per item), beside items that
    share a cached start; each score and state is that of one plain forward over the spliced embeddings."""
    from reamo.model.shared_prefix import ScoringItem

    media = media_tensors(tiny_model)
    prefix = "USER: Read the text. "
    with_image = ScoringItem(prompt=prefix + "<image>\nWho? ASSISTANT:", prefix=prefix, continuations=[" Nadal"],
                             media={"image": media["image"]})
    plain = ScoringItem(prompt=prefix + "Who? ASSISTANT:", prefix=prefix, continuations=[" Nadal"])
    scores = tiny_model.score_continuations([with_image, plain])
    states = tiny_model.answer_start_states([with_image, plain], 1)
    for item, (score,), state in zip((with_image, plain), scores, states, strict=True):
        prompt_ids = tiny_model.tokenize_with_placeholders(item.prompt)
        answer = tiny_model.tokenizer(" Nadal", add_special_tokens=False)["input_ids"]
        embeds = tiny_model.embed(prompt_ids + answer, item.media or {})[None]
        with torch.no_grad():
            out = tiny_model.llm(inputs_embeds=embeds, output_hidden_states=True)
        logits = out.logits[0].float().log_softmax(-1)
        first = embeds.shape[1] - len(answer) - 1
        expected = sum(float(logits[first + i, token]) for i, token in enumerate(answer))
        assert score == pytest.approx(expected, abs=1e-3)
        torch.testing.assert_close(state, out.hidden_states[1][0, -1].float(), rtol=1e-4, atol=1e-4)
    assert scores[0] != pytest.approx(scores[1])  # the image changed the answer's likelihood


def _lora_folder(tiny_llm_dir, folder, shift: float) -> Any:
    """A saved text-only tiny model whose LoRA adapter is made non-trivial by `shift` (LoRA B starts at zero)."""
    torch.manual_seed(1)
    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[],
                                               lora=LoraSettings(r=4, alpha=8, dropout=0.0)))
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.add_(shift)
    return model.save_pretrained(folder)


def test_a_writer_adapter_writes_and_the_adapter_scores(tiny_llm_dir, tmp_path) -> None:
    """With `writer_adapter/`, free text comes from the writer's LLM and every scored decision from `adapter/`'s:
    each job gives exactly what a model with only that adapter gives, merged for inference or not, and the writer
    survives a save and load (but not a load for training, which continues `adapter/` only)."""
    from reamo.model.modeling_reamo import WRITER_ADAPTER_DIR
    from reamo.model.shared_prefix import ScoringItem

    decider = ReamoModel.from_pretrained(_lora_folder(tiny_llm_dir, tmp_path / "decider", 0.3))
    writer_only = ReamoModel.from_pretrained(_lora_folder(tiny_llm_dir, tmp_path / "writer", -0.3))
    both = ReamoModel.from_pretrained(tmp_path / "decider")
    both.add_writer(tmp_path / "writer" / "adapter")
    prompts = ["USER: Rafael Nadal plays ASSISTANT:", "USER: hi ASSISTANT:"]
    prefixes = ["USER:", "USER:"]
    items = [ScoringItem(prompt=prompts[0], continuations=[" PER", " ORG", " None"], prefix="USER:")]

    def jobs(model: ReamoModel) -> tuple[list[str], list[float]]:
        return (model.generate(prompts, max_new_tokens=8, prefixes=prefixes),
                model.score_continuations(items)[0])

    written, scored = jobs(both)
    assert written == jobs(writer_only)[0] != jobs(decider)[0]
    assert scored == pytest.approx(jobs(decider)[1], abs=1e-5)
    assert scored != pytest.approx(jobs(writer_only)[1], abs=1e-3)

    saved = both.save_pretrained(tmp_path / "both")
    assert (saved / WRITER_ADAPTER_DIR / "adapter_model.safetensors").is_file()
    reloaded = ReamoModel.from_pretrained(saved)
    reloaded.prepare_for_inference()
    assert reloaded.writer_llm is not None
    assert not any("lora_" in name for name, _ in reloaded.writer_llm.named_parameters())  # folded in
    merged_written, merged_scored = jobs(reloaded)
    assert merged_written == written
    assert merged_scored == pytest.approx(scored, abs=1e-4)
    assert ReamoModel.from_pretrained(saved, training=True).writer_llm is None
    with pytest.raises(CheckpointNotFoundError, match="no LoRA adapter"):
        both.add_writer(tmp_path / "nothing-here")
