"""Nothing is evaluated or unpickled from data; tool arguments never become paths or shell commands;
the agent is safe to share between threads."""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reamo.media import MediaBundle
from reamo.schema import ToolCall
from reamo.tools.dispatcher import Dispatcher
from reamo.tools.registry import default_registry

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ["reamo", "tools", "tuning", "eval"]


def source_files() -> list[Path]:
    return [p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")]


def calls_in(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.Call)]


def name_of(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        base = func.value.id if isinstance(func.value, ast.Name) else "?"
        return f"{base}.{func.attr}"
    return "?"


def test_no_eval_exec_or_pickle_in_the_code() -> None:
    offenders = []
    for path in source_files():
        for call in calls_in(path):
            name = name_of(call)
            if name in {"eval", "exec", "pickle.load", "pickle.loads", "dill.load", "marshal.loads", "yaml.load"}:
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno} {name}")
    assert not offenders, offenders


def test_every_torch_load_is_weights_only() -> None:
    offenders = []
    for path in source_files():
        for call in calls_in(path):
            if name_of(call) == "torch.load":
                kw = {k.arg: k.value for k in call.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert not offenders, offenders


def test_no_shell_true_subprocesses() -> None:
    offenders = []
    for path in source_files():
        for call in calls_in(path):
            if name_of(call).startswith("subprocess.") or name_of(call) == "os.system":
                shell = {k.arg: k.value for k in call.keywords}.get("shell")
                if name_of(call) == "os.system" or (isinstance(shell, ast.Constant) and shell.value):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert not offenders, offenders


@pytest.mark.parametrize(
    "arguments",
    [
        {"target": "x", "path": "../../../../etc/passwd"},
        {"target": "x", "media": "/etc/passwd"},
        {"target": "$(rm -rf /)", "cmd": "ls"},
        {"image": "/etc/shadow"},
    ],
)
def test_tool_arguments_cannot_name_files(arguments: dict) -> None:
    """Tools take the user's media from the dispatcher, never a path from the model: extra keys are refused."""
    results = Dispatcher(default_registry()).run(
        [ToolCall(id="c", name="ImageSegmentation", arguments=arguments)], MediaBundle()
    )
    assert results[0].error is not None and results[0].error.kind == "bad_arguments"


def test_a_shell_looking_target_is_only_text() -> None:
    results = Dispatcher(default_registry()).run(
        [ToolCall(id="c", name="AudioSegmentation", arguments={"target": "$(touch /tmp/reamo-pwned)"})], MediaBundle()
    )
    assert results[0].error.kind == "missing_media"  # refused for lack of audio, nothing executed
    assert not Path("/tmp/reamo-pwned").exists()


def test_agent_shared_by_8_threads_gives_unmixed_results(tiny_llm_dir) -> None:
    from reamo.agent import Agent
    from reamo.model import ReamoConfig, ReamoModel
    from reamo.tools.registry import ToolRegistry

    agent = Agent(ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir))), registry=ToolRegistry())
    texts = [f"Rafael Nadal met person number {i} in Mallorca." for i in range(8)]
    expected = [agent.extract(text=t, tasks="ner", max_new_tokens=6).raw_output for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda t: agent.extract(text=t, tasks="ner", max_new_tokens=6), texts))
    assert [r.text for r in results] == texts
    assert [r.raw_output for r in results] == expected
