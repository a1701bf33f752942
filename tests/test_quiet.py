"""A normal run prints results only: no loading bar, no bitsandbytes import or warnings, no FutureWarning (issue 27)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

NOISE = ("warn", "Loading weights", "bitsandbytes", "gemm_4bit", "kernels-community", "Traceback")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "PYTHONWARNINGS"):
        env.pop(name, None)  # as on a user's machine: nothing set that would hide the noise
    return env


def test_extract_prints_results_and_nothing_else() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "reamo.cli", "extract", "--text", "Rafael Nadal visits Paris", "--tasks", "ner"],
        capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert out.returncode == 0, out.stderr
    assert "Entities" in out.stdout and "Rafael Nadal" in out.stdout
    for word in NOISE:
        assert word.lower() not in out.stderr.lower(), out.stderr
    assert out.stderr.strip() == "", out.stderr


def test_loading_the_default_does_not_import_bitsandbytes() -> None:
    """peft imports bitsandbytes whenever installed; the embedded default (never 4-bit) hides it while loading."""
    script = textwrap.dedent(
        """
        import sys
        from reamo.agent import Agent
        from transformers.utils import logging
        agent = Agent.from_pretrained("default")
        print("bitsandbytes imported:", "bitsandbytes" in sys.modules)
        print("adapter merged:", agent.model.adapter_merged)
        print("caller's bars still on:", logging.is_progress_bar_enabled())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr
    assert "bitsandbytes imported: False" in out.stdout and "adapter merged: True" in out.stdout, out.stdout
    # the default's sub-second load shows no "Loading weights" bar, and the caller's bar setting is left as it was
    assert "caller's bars still on: True" in out.stdout, out.stdout
    for word in NOISE[1:]:
        assert word.lower() not in out.stderr.lower(), out.stderr
    assert "FutureWarning" not in out.stderr, out.stderr


def test_hidden_bitsandbytes_comes_back_for_a_later_4bit_model() -> None:
    """After the block, the availability checks that peft / transformers cache answer 'installed' again."""
    script = textwrap.dedent(
        """
        import importlib.util, sys
        from reamo.quiet import bitsandbytes_hidden
        installed = importlib.util.find_spec("bitsandbytes") is not None
        with bitsandbytes_hidden():
            import peft
            from peft.import_utils import is_bnb_available
            from transformers.utils.import_utils import is_bitsandbytes_available
            inside = (is_bnb_available(), is_bitsandbytes_available(), "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is not None)
        after = (is_bnb_available(), is_bitsandbytes_available())
        print(installed, inside, after, "bitsandbytes" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr
    installed = out.stdout.split()[0] == "True"
    if installed:
        assert out.stdout.strip() == "True (False, False, False) (True, True) False", out.stdout
    else:
        assert out.stdout.strip() == "False (False, False, False) (False, False) False", out.stdout


def test_cli_turns_transformers_bars_off_without_importing_it_and_keeps_them_with_verbose() -> None:
    script = textwrap.dedent(
        """
        import sys
        from reamo.quiet import quiet_cli
        quiet_cli(verbose=sys.argv[1] == "1")
        print("transformers" in sys.modules, end=" ")
        from transformers.utils import logging
        print(logging.is_progress_bar_enabled())
        """
    )
    for verbose, expected in (("0", "False False"), ("1", "False True")):
        out = subprocess.run([sys.executable, "-c", script, verbose], capture_output=True, text=True, timeout=300,
                             env=_env())
        assert out.stdout.strip() == expected, (verbose, out.stdout, out.stderr)


def test_training_a_model_that_is_not_4bit_does_not_import_bitsandbytes(tmp_path, tiny_llm_dir) -> None:
    """transformers' TrainingArguments import peft, whose helpers import bitsandbytes: `reamo train` printed its
    CPU-kernel warning at every start. Only a 4-bit model needs it."""
    rows = "\n".join(json.dumps({"id": f"t{i}", "messages": [
        {"role": "system", "content": "Extract entities."},
        {"role": "user", "content": f"Text: Rafael Nadal visits Paris {i}"},
        {"role": "assistant", "content": "Entities: (Rafael Nadal, PER)(Paris, LOC)"}],
        "task": ["ner"], "source": "test", "split": "train", "stage": 4}) for i in range(4))
    (tmp_path / "data.jsonl").write_text(rows + "\n")
    script = textwrap.dedent(
        f"""
        import sys
        from reamo.model import ReamoConfig
        from reamo.tuning.config import TrainConfig
        from reamo.tuning.trainer import train
        config = TrainConfig.from_dict({{
            "stage": 4, "model": ReamoConfig(llm={str(tiny_llm_dir)!r}, encoder=None, modalities=[]).model_dump(),
            "data": {{"files": [{str(tmp_path / "data.jsonl")!r}]}}, "output_dir": {str(tmp_path / "run")!r},
            "max_steps": 1, "batch_size": 2, "bf16": False, "progress": False, "save_steps": 10}})
        print("trained:", train(config).is_dir())
        print("bitsandbytes imported:", sys.modules.get("bitsandbytes") is not None)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr
    assert "trained: True" in out.stdout and "bitsandbytes imported: False" in out.stdout, out.stdout + out.stderr
    assert "gemm_4bit" not in out.stderr, out.stderr


def test_loading_a_tuned_model_folder_is_as_quiet_as_the_default(tmp_path, tiny_llm_dir) -> None:
    """A user's own tuned model (`Agent.from_pretrained(folder)`, not 4-bit) loaded peft with bitsandbytes visible:
    the CPU-kernel warning and peft's FutureWarning at every load. Now the folder loads as quietly as the default."""
    from reamo.model import ReamoConfig, ReamoModel
    from reamo.model.modeling_reamo import LoraSettings

    config = ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[], lora=LoraSettings(r=4))
    folder = ReamoModel.from_config(config).save_pretrained(tmp_path / "tuned")
    script = textwrap.dedent(
        f"""
        import sys
        from reamo.agent import Agent
        agent = Agent.from_pretrained({str(folder)!r})
        print("lora:", hasattr(agent.model.llm, "peft_config") or agent.model.adapter_merged)
        print("bitsandbytes imported:", sys.modules.get("bitsandbytes") is not None)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr
    assert "lora: True" in out.stdout and "bitsandbytes imported: False" in out.stdout, out.stdout + out.stderr
    for word in ("gemm_4bit", "kernels-community", "FutureWarning", "Traceback"):
        assert word not in out.stderr, out.stderr
