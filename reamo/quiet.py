"""Keeps third-party noise out of a normal run: what is printed is results and real progress (`-v` for more).

Three sources, each handled as narrowly as the libraries allow:

* transformers' "Loading weights" bar: a bar per model load, over in a fraction of a second for the default. The CLI
  turns transformers' own progress bars off (`transformers.utils.logging.disable_progress_bar`) unless `-v`; the
  Python API hides them only while the embedded default loads (`transformers_bars_hidden`) and leaves the caller's
  setting as it was, so a 7B load still shows its progress.
* peft (0.21) calls the deprecated `PreTrainedModel.is_gradient_checkpointing` when it wraps a model, so every
  adapter load warns `FutureWarning: is_gradient_checkpointing is deprecated` about peft's code, not ours. That one
  message of that category from that module is filtered; every other warning still shows.
* bitsandbytes: `import peft` imports bitsandbytes whenever it is installed (peft/helpers.py `try: import
  bitsandbytes`, no switch to turn it off), and importing bitsandbytes on a CPU with AVX512-BF16 asks the Hugging Face
  Hub for a CPU kernel (network, then "Failed to load CPU gemm_4bit_forward" warnings). It is only needed for 4-bit
  models, so `bitsandbytes_hidden()` makes it look not installed to peft's and transformers' own availability checks
  while a model that is not 4-bit loads, and restores it afterwards (a 4-bit model loaded later in the same process
  imports it as usual).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

_hide_lock = threading.RLock()


def filter_known_warnings() -> None:
    """Ignore the deprecation warning transformers raises for peft's use of `is_gradient_checkpointing` (idempotent)."""
    warnings.filterwarnings(
        "ignore",
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )


def quiet_cli(verbose: bool = False) -> None:
    """What the CLI applies at start: known warnings filtered, transformers' progress bars off unless `verbose`.

    transformers is not imported for this (0.7 s that commands such as `reamo kg query` do not need): the bars are
    turned off right after its first import, or now if it is already imported. Hub download bars stay on.
    """
    filter_known_warnings()
    if not verbose:
        _after_import("transformers.utils.logging", lambda module: module.disable_progress_bar())


def _after_import(module_name: str, action: Callable[[ModuleType], None]) -> None:
    """Run `action(module)` now if `module_name` is imported, else just after its first import."""
    module = sys.modules.get(module_name)
    if module is not None:
        action(module)
    elif not any(isinstance(f, _AfterImport) and f.name == module_name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(module_name, action))


class _AfterImport(importlib.abc.MetaPathFinder):
    """One-shot import hook: finds the module as the normal path finder would and runs an action once it is loaded."""

    def __init__(self, name: str, action: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.action = action

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # an unusual install: the import goes on without the action
        run, action = spec.loader.exec_module, self.action

        def exec_module(module: ModuleType) -> None:
            run(module)
            action(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


@contextlib.contextmanager
def bitsandbytes_hidden() -> Iterator[None]:
    """While loading a model that is not 4-bit: bitsandbytes is neither imported nor seen as installed.

    `sys.modules["bitsandbytes"] = None` is the standard way to mark a module as unavailable: `import bitsandbytes`
    raises ImportError (which peft catches) and `importlib.util.find_spec` answers None (what peft's
    `is_bnb_available` and transformers' `is_bitsandbytes_available` ask). Afterwards the marker is removed and those
    cached checks are cleared, so nothing remembers "not installed". Does nothing if bitsandbytes is already imported.
    """
    with _hide_lock:
        if "bitsandbytes" in sys.modules:
            yield
            return
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
        try:
            yield
        finally:
            if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
                del sys.modules["bitsandbytes"]
            _clear_bitsandbytes_checks()


def _clear_bitsandbytes_checks() -> None:
    """Forget the cached "is bitsandbytes installed?" answers given while it was hidden."""
    for module_name in ("peft.import_utils", "transformers.utils.import_utils", "accelerate.utils.imports"):
        module = sys.modules.get(module_name)
        for name in dir(module) if module is not None else ():
            check = getattr(module, name, None)
            if ("bnb" in name or "bitsandbytes" in name) and callable(getattr(check, "cache_clear", None)):
                check.cache_clear()


@contextlib.contextmanager
def transformers_bars_hidden() -> Iterator[None]:
    """transformers' progress bars off for one fast load, then back to what the caller had (on or off)."""
    from transformers.utils import logging as transformers_logging

    with _hide_lock:
        was_enabled = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        try:
            yield
        finally:
            if was_enabled:
                transformers_logging.enable_progress_bar()
