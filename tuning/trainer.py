"""One trainer for the four stages: HF `Trainer` around `ReamoModel.forward(inputs_embeds, attention_mask, labels)`.

The stage decides what learns (1: LoRA; 2: projector only, encoder and LLM frozen; 3 and 4: LoRA + projector) and
which data builders feed it. Checkpoints hold only what learns (adapter + projector, written by the atomic
`ReamoModel.save_pretrained` into `checkpoint-N/reamo/`) plus the Trainer's optimizer / scheduler / RNG state, so
`resume=True` continues from the latest *complete* checkpoint after a kill. The final model is
`<output_dir>/final`, a folder `ReamoModel.from_pretrained` and `Agent.from_pretrained` load.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from reamo.tuning.collate import (
    IGNORE,
    InstructionDataset,
    PrefixGroupedSampler,
    collate,
    expand_labels,
    shared_prefix_length,
)
from reamo.tuning.config import TrainConfig
from reamo.tuning.data import (
    BuildOptions,
    InstructionExample,
    read_instructions,
    refuse_eval_split,
)
from safetensors.torch import load_file
from torch import nn

from reamo.errors import ConfigError
from reamo.model import ReamoConfig, ReamoModel
from reamo.model.embedded_default import EMBEDDED_NAMES, embedded_base_config
from reamo.model.modeling_reamo import ADAPTER_DIR, PROJECTOR_NAME

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
CHECKPOINT_MODEL_DIR = "reamo"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class ReamoForTraining(nn.Module):
    """What the HF Trainer drives: splices media, expands labels over placeholders, returns the LM loss.

    When the batch's rows begin with the same tokens (batches grouped by system prompt, `PrefixGroupedSampler`),
    that prefix is run once (`ReamoModel.forward_shared_prefix`): same loss and gradients, less compute."""

    def __init__(self, reamo: ReamoModel, share_prefix: bool = True) -> None:
        super().__init__()
        self.reamo = reamo
        self.share_prefix = share_prefix  # compute the prompt start the batch's rows share once (same loss)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor,
                media: list[dict[str, list[torch.Tensor]]] | None = None) -> dict[str, torch.Tensor]:
        reamo = self.reamo
        rows = [input_ids[row, :length].tolist() for row, length in enumerate(lengths.tolist())]
        row_labels = [labels[row, : len(ids)].tolist() for row, ids in enumerate(rows)]
        shared = shared_prefix_length(rows, row_labels) if self.share_prefix else 0
        sequences, targets = [], []
        for row, ids in enumerate(rows):
            features = {
                modality: [reamo.encode_media(modality, tensor.unsqueeze(0))[0] for tensor in tensors]  # type: ignore[arg-type]
                for modality, tensors in ((media or [{}] * len(rows))[row] or {}).items()
            }
            sequences.append(reamo.embed(ids[shared:], features))
            targets.append(expand_labels(ids[shared:], row_labels[row][shared:], reamo.config.tokens_per_input))
        embeds, mask = reamo.batch_embeds(sequences, left_pad=False)
        padded = torch.full(mask.shape, IGNORE, dtype=torch.long, device=embeds.device)
        for row, target in enumerate(targets):
            padded[row, : len(target)] = torch.tensor(target, device=embeds.device)
        if shared:
            output = reamo.forward_shared_prefix(reamo.embed(rows[0][:shared]), embeds, mask, padded)
        else:
            output = reamo.forward(embeds, mask, padded)
        return {"loss": output.loss}


# ---------------------------------------------------------------------------------------------------------------
# Model and trainable parts
# ---------------------------------------------------------------------------------------------------------------


SHIPPED_DEFAULT = "default-adapter"  # `model:` value: the embedded default with its shipped adapter, to continue


def build_model(config: TrainConfig) -> ReamoModel:
    """The model to tune: the embedded default, a previous stage's folder, or a ReamoConfig; LoRA added if absent.
    bitsandbytes stays unimported unless the model is 4-bit (`reamo.quiet.bitsandbytes_hidden`)."""
    from reamo.quiet import bitsandbytes_hidden, filter_known_warnings

    filter_known_warnings()
    if not uses_4bit(config):
        with bitsandbytes_hidden():
            return _build_model(config)
    return _build_model(config)


def uses_4bit(config: TrainConfig) -> bool:
    """Whether the model to tune is 4-bit (the only case that needs bitsandbytes)."""
    if isinstance(config.model, ReamoConfig):
        return bool(config.model.load_in_4bit)
    return isinstance(config.model, str) and _saved_4bit(config.model)


def _saved_4bit(folder: str) -> bool:
    """Whether a saved model folder's config asks for a 4-bit LLM (False for names that are no folder)."""
    path = Path(folder).expanduser()
    try:
        return (path / "reamo_config.json").is_file() and ReamoConfig.load(path).load_in_4bit
    except Exception:  # noqa: BLE001 - an unreadable config fails later with its own clear error
        return False


def _build_model(config: TrainConfig) -> ReamoModel:
    if isinstance(config.model, ReamoConfig):
        model = ReamoModel.from_config(config.model, training=True)
    elif config.model in EMBEDDED_NAMES:  # an embedded base ("default", "gemma3-270m", ...) tuned from scratch
        model = ReamoModel.from_config(embedded_base_config(config.model), training=True)
    elif config.model == SHIPPED_DEFAULT:
        # the embedded default with the adapter shipped in the package, trainable: a new pass continues the
        # shipped model on a fresh clone, where the earlier passes' run folders do not exist
        from peft import PeftModel

        from reamo.model.embedded_default import SHIPPED_ADAPTER, default_config

        model = ReamoModel.from_config(default_config(), training=True)
        model.llm = PeftModel.from_pretrained(model.llm, str(SHIPPED_ADAPTER), is_trainable=True)
        model.llm.float()  # the shipped adapter is bfloat16; train its weights in float32
    else:
        model = ReamoModel.from_pretrained(config.model, training=True)
    has_lora = hasattr(model.llm, "peft_config")
    if not has_lora and config.lora is not None and "lora" in config.trainable:
        model.add_lora(config.lora, training=True)
        model.config = model.config.model_copy(update={"lora": config.lora})
    return model


def set_trainable(model: ReamoModel, parts: list[str]) -> list[str]:
    """Freeze everything, then unfreeze the LoRA weights and/or the projectors; returns the trainable names."""
    model.requires_grad_(False)
    if "lora" in parts:
        for name, parameter in model.llm.named_parameters():
            if "lora_" in name:
                parameter.requires_grad_(True)
    if "projector" in parts:
        model.projectors.requires_grad_(True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ConfigError(
            f"nothing to train: train={parts} but the model has "
            f"{'no encoder/projector' if not model.projectors else 'no LoRA adapter'}; stage 2 needs a model with "
            "an encoder (model.encoder in the config), LoRA stages need lora settings (lora: {r: 16})"
        )
    return names


def load_trainable(model: ReamoModel, folder: Path) -> None:
    """Load the adapter and projector weights of a `save_pretrained` folder into the live (training) model."""
    adapter = folder / ADAPTER_DIR / "adapter_model.safetensors"
    if adapter.is_file() and hasattr(model.llm, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model.llm, load_file(str(adapter)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ConfigError(f"{adapter} does not match this model's LoRA layout ({len(unexpected)} unexpected keys)")
    projector = folder / PROJECTOR_NAME
    if projector.is_file() and model.projectors:
        model.projectors.load_state_dict(load_file(str(projector)))


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def build_examples(config: TrainConfig, encoded: Sequence[str] = ()) -> list[InstructionExample]:
    """The stage's data mix from `config.data` (deterministic for a seed, so a resumed run sees the same order).

    `encoded`: the media kinds the model encodes itself (their prompts get placeholders, the others tool-made
    text). It shapes the prompts only, never which sentences are drawn.
    """
    from reamo.tuning.captions import caption_examples, photo_pairs, speech_pairs
    from reamo.tuning.data import uie_examples
    from reamo.tuning.invocation import invocation_examples
    from reamo.tuning.speech import speech_examples

    data, stage = config.data, config.stage
    refuse_eval_split(data.split)
    options = BuildOptions(shuffle_labels_prob=data.shuffle_labels_prob, subset_labels_prob=data.subset_labels_prob,
                           paraphrase_prob=data.paraphrase_prob, encoded=list(encoded))
    examples: list[InstructionExample] = []
    counts = {"gmner": data.gmner, "gmner_text": data.gmner_text, "mnre": data.mnre, "mnre_pairs": data.mnre_pairs,
              "m2e2": data.m2e2}
    if stage == 2:
        pairs = list(data.caption_pairs)
        if data.photos:
            from reamo.tuning.speech import default_speech_cache

            pairs += photo_pairs(Path(data.speech_cache or default_speech_cache()).parent / "photos",
                                 shared_images=_shared_images())
        if data.speech:
            pairs += speech_pairs(_sentences(data, data.speech), data.speech_cache, data.seed)
        examples += caption_examples(pairs, data.split, data.seed)
    elif any(counts.values()):
        examples += uie_examples(data.split, counts, data.seed, stage, options, data.root, data.mnre_none_fraction,
                                 data.m2e2_none_fraction, data.keep_calibration_out)
    if stage != 2:
        examples += decision_examples(data, options)
    if stage == 4 and data.invocation:
        examples += invocation_examples(_sentences(data, data.invocation), data.split, data.seed, options=options)
    if stage in (3, 4) and data.speech:
        examples += speech_examples(_sentences(data, data.speech, salt="speech"), data.split, data.speech_cache,
                                    data.seed, options=options)
    for path in data.files:
        examples += read_instructions(path)
    for example in examples:
        refuse_eval_split(example.split, f"training example {example.id}")
    if not examples:
        raise ConfigError(f"stage {stage}: the data section gives no examples; set counts (gmner, mnre, m2e2, "
                          "invocation, speech), caption_pairs / photos (stage 2) or files")
    random.Random(f"order-{data.seed}").shuffle(examples)
    logger.info("stage %d: %d training examples", stage, len(examples))
    return examples


def decision_examples(data: Any, options: BuildOptions) -> list[InstructionExample]:
    """The candidate-scoring decisions of `reamo.decisions` (`reamo.tuning.decisions`): trigger and argument
    decisions on M2E2 (every gold trigger and role, plus the configured numbers of negatives), and MNRE pairs asked
    the other way round."""
    from reamo.tuning.decisions import (
        argument_examples,
        build_trigger_lexicon,
        m2e2_for_decisions,
        reversed_pair_examples,
        trigger_examples,
    )

    out: list[InstructionExample] = []
    if data.event_decisions:
        sentences = m2e2_for_decisions(data.split, data.root)
        lexicon = build_trigger_lexicon(sentences)
        out += trigger_examples(sentences, data.split, lexicon, data.trigger_negatives, data.seed, options)
        out += argument_examples(sentences, data.split, data.argument_negatives, data.seed, options)
    if data.mnre_reversed:
        from reamo.tuning.data import balance_relations

        from reamo.datasets import read_mnre_for_tuning

        lines = balance_relations(read_mnre_for_tuning(data.split, root=data.root), data.mnre_reversed, 0.0,
                                  data.seed + 1000)
        out += reversed_pair_examples(lines, data.split, data.seed, options)
    return out


def _sentences(data: Any, count: int, salt: str = "") -> list:
    """`count` train sentences drawn evenly from GMNER, M2E2 (with events) and MNRE (grouped by sentence)."""
    from reamo.tuning.data import balance_m2e2, group_mnre, m2e2_pool, sample

    from reamo.datasets import read_gmner, read_mnre_for_tuning

    share = [count // 3 + (1 if i < count % 3 else 0) for i in range(3)]
    seed = f"{data.seed}{salt}"
    picked = sample(read_gmner(data.split, root=data.root), share[0], seed, "inv-gmner")
    picked += balance_m2e2(m2e2_pool(data.split, data.root, data.keep_calibration_out), share[1], 0.2,
                           seed)  # type: ignore[arg-type]
    picked += sample(group_mnre(read_mnre_for_tuning(data.split, root=data.root)), share[2], seed, "inv-mnre")
    random.Random(f"sentences-{seed}").shuffle(picked)
    return picked


def _shared_images() -> Path:
    from reamo.datasets import data_root

    return data_root() / "media" / "images"


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """Newest `checkpoint-N` whose trainer state (written last) parses and whose model folder is complete."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_RE.match(p.name))), reverse=True)
    for step, path in found:
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("skipping incomplete checkpoint %s (no readable trainer_state.json)", path)
            continue
        if state.get("global_step") == step and (path / CHECKPOINT_MODEL_DIR / "reamo_config.json").is_file():
            return path
        logger.warning("skipping incomplete checkpoint %s", path)
    return None


def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the OS (glibc `malloc_trim`); False where there is no glibc.

    Training batches change shape every step (sequence lengths vary), and glibc keeps the freed activation buffers
    as fragmented heap: without this the default recipe's process grew to 22 GiB RSS in 190 steps on a 24 GiB
    machine; trimming every 10 steps keeps it to a few GiB.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


def _trainer_class() -> type:
    from transformers import Trainer

    class ReamoTrainer(Trainer):
        """Saves only what learns (through ReamoModel.save_pretrained) and loads it back on resume; with
        `share_prefix`, batches are grouped by system prompt (`PrefixGroupedSampler`)."""

        share_prefix = False

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            """Groups the rows of a whole optimizer step (micro-batch x grad_accum), not of one micro-batch: each
            micro-batch still shares its prompt start, and how a step's rows are split into micro-batches (the
            float32 fallback halves them) no longer changes which rows make the step, so a run resumed or repeated
            on a machine with the other bf16 support trains on the same batches."""
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.share_prefix and isinstance(dataset, InstructionDataset):
                step_rows = self._train_batch_size * self.args.gradient_accumulation_steps
                return PrefixGroupedSampler(dataset.groups, step_rows, seed=self.args.data_seed or 0)
            return super()._get_train_sampler(train_dataset)

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            if self.args.should_save:
                target = Path(output_dir or self.args.output_dir) / CHECKPOINT_MODEL_DIR
                self.accelerator.unwrap_model(self.model).reamo.save_pretrained(target)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
            folder = Path(resume_from_checkpoint) / CHECKPOINT_MODEL_DIR
            if not (folder / "reamo_config.json").is_file():
                raise ConfigError(f"checkpoint {resume_from_checkpoint} has no {CHECKPOINT_MODEL_DIR}/ model folder")
            load_trainable(self.accelerator.unwrap_model(self.model).reamo, folder)
            logger.info("resumed trainable weights from %s", folder)

    return ReamoTrainer


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


def use_bf16(requested: bool, cuda: bool | None = None, cpu_has_bf16: bool | None = None) -> bool:
    """Whether to train under bf16 autocast: as asked, except on a CPU without native bfloat16 kernels.

    Without them (e.g. AVX2-only CPUs) every bf16 matmul is emulated: the default's recipe measured ~200 s a step
    on an AVX2 AMD EPYC against ~12 s on an AVX-512 BF16 Xeon, so there it trains in float32 instead (same
    recipe, full precision) and says so; `train` then splits each micro-batch in two (`split_micro_batch`).
    """
    if not requested:
        return False
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        return True
    if cpu_has_bf16 is None:
        from reamo.model.modeling_reamo import cpu_has_native_bf16

        cpu_has_bf16 = cpu_has_native_bf16()
    if not cpu_has_bf16:
        logger.warning(
            "bf16: true, but this CPU has no native bfloat16 kernels (torch CPU capability %s; needs AVX-512 or "
            "AMX): emulated bf16 is over 10x slower than float32 here, so this run trains in float32 (its "
            "activations take about twice the memory, so an even micro-batch is halved and grad_accum doubled: "
            "same batch per step). Set bf16: false in the config to choose float32 and the batch yourself",
            torch.backends.cpu.get_cpu_capability())
        return False
    return True


def split_micro_batch(batch_size: int, grad_accum: int) -> tuple[int, int]:
    """Halve the micro-batch and double accumulation: the same rows per optimizer step at about half the peak
    activation memory, which is what the float32 fallback of a bf16 recipe needs to fit where bf16 fit (at 16 rows
    the default's recipe was killed at 24 GiB in float32; 8 x 2 peaked near 8 GiB). An odd micro-batch cannot be
    split without changing the step's batch, so it is kept."""
    if batch_size % 2:
        logger.warning("float32 fallback: batch_size %d is odd, so it is kept; if the run is killed for memory, "
                       "set a smaller batch_size with a larger grad_accum", batch_size)
        return batch_size, grad_accum
    logger.info("float32 fallback: %d rows a micro-batch x grad_accum %d (the recipe's %d x %d)",
                batch_size // 2, grad_accum * 2, batch_size, grad_accum)
    return batch_size // 2, grad_accum * 2


def check_writable(folder: Path) -> None:
    """Fail before any work when checkpoints cannot be written (read-only place, not a folder, disk full)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise ConfigError(
            f"output folder {folder} cannot be written ({err.strerror or err}); set output_dir to a writable folder "
            "with free space"
        ) from err


def train(config: TrainConfig) -> Path:
    """Run one stage; returns `<output_dir>/final`, the tuned model folder."""
    from contextlib import nullcontext

    from reamo.quiet import bitsandbytes_hidden

    # transformers' training arguments import peft, whose helpers import bitsandbytes (a warning and a reach for
    # the network on CPU): not for a model that is not 4-bit
    with nullcontext() if uses_4bit(config) else bitsandbytes_hidden():
        from transformers import Trainer, TrainingArguments, set_seed  # noqa: F401 - imported here, hidden

    refuse_eval_split(config.data.split)
    if config.threads:
        torch.set_num_threads(config.threads)
    set_seed(config.seed)
    output_dir = Path(config.output_dir).expanduser()
    check_writable(output_dir)
    model = build_model(config)
    trainable = set_trainable(model, config.trainable)
    logger.info("stage %d trains %s: %d tensors, %d parameters", config.stage, "+".join(config.trainable),
                len(trainable), sum(p.numel() for p in model.parameters() if p.requires_grad))
    if config.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.llm.enable_input_require_grads()
    dataset = InstructionDataset(model, build_examples(config, model.encoded_modalities), config.max_seq_len, config.data.media_root)
    resume_from = None
    if config.resume:
        resume_from = latest_complete_checkpoint(output_dir)
        if resume_from is None:
            logger.info("resume: no complete checkpoint in %s, starting from step 0", output_dir)
        else:
            logger.info("resuming from %s", resume_from)
    bf16 = use_bf16(config.bf16)
    batch_size, grad_accum = config.batch_size, config.grad_accum
    if config.bf16 and not bf16:
        batch_size, grad_accum = split_micro_batch(batch_size, grad_accum)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.data.seed,
        bf16=bf16,
        deepspeed=config.deepspeed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        report_to=[],
        disable_tqdm=not config.progress,
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        ddp_find_unused_parameters=False,  # frozen weights are known up front; skip DDP's extra search pass
    )
    pad_id = model.tokenizer.pad_token_id or 0
    trainer = _trainer_class()(
        model=ReamoForTraining(model, share_prefix=config.share_prefix), args=args, train_dataset=dataset,
        data_collator=lambda batch: collate(batch, pad_id),
    )
    trainer.share_prefix = config.share_prefix
    if release_freed_memory():
        from transformers import TrainerCallback

        class ReleaseFreedMemory(TrainerCallback):
            """Every 10 steps: often enough to stop the heap's growth, rare enough that re-touching the returned
            pages costs nothing measurable."""

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step % 10 == 0:
                    release_freed_memory()

        trainer.add_callback(ReleaseFreedMemory())
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    final = output_dir / FINAL_DIR
    if trainer.is_world_process_zero():  # one writer under DDP / DeepSpeed; the other ranks hold the same weights
        model.save_pretrained(final)
        (output_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1), encoding="utf-8")
        (output_dir / "train_config.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
    trainer.accelerator.wait_for_everyone()
    logger.info("stage %d done: %s", config.stage, final)
    return final


def train_from_yaml(path: str | Path, stage: int | None = None, resume: bool | None = None) -> Path:
    """What `reamo train --config PATH [--stage N] [--resume]` runs: flags override the file's keys."""
    return train(TrainConfig.from_yaml(path, stage=stage, resume=True if resume else None))
