"""The Gradio chat UI (`pip install 'reamo[ui]'`): `launch()`, `build_app(agent)`, `mount(fastapi_app, agent)`."""

from __future__ import annotations

from typing import Any

__all__ = ["build_app", "launch", "mount"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        try:
            from reamo.ui import app
        except ImportError as error:
            if getattr(error, "name", "") and error.name.split(".")[0] in ("gradio", "gradio_client"):
                from reamo.errors import MissingDependencyError

                raise MissingDependencyError(
                    "the UI needs Gradio; install it with: pip install 'reamo[ui]'"
                ) from error
            raise
        return getattr(app, name)
    raise AttributeError(f"module 'reamo.ui' has no attribute {name!r}")
