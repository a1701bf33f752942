"""A normal run prints results only: no loading bar, no bitsandbytes import or warnings, no FutureWarning (issue 27)."""

from __future__ import annotations

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
        agent = Agent.from_pretrained("default")
        print("bitsandbytes imported:", "bitsandbytes" in sys.modules)
        print("adapter merged:", agent.model.adapter_merged)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr
    assert "bitsandbytes imported: False" in out.stdout and "adapter merged: True" in out.stdout, out.stdout
    for word in NOISE[1:]:  # (the library keeps transformers' loading bar; the CLI turns it off)
        if word != "Loading weights":
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
