"""`reamo` command line: a thin map from verbs to library functions (extract, chat, demo)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from reamo import __version__
from reamo.errors import ReamoError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Grounded multimodal information extraction.")
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"reamo {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _check_file(path: Optional[Path], flag: str) -> None:
    if path is not None and not path.is_file():
        _fail(f"{flag} file not found: {path}")


def _load_agent(model: str, max_new_tokens: int, **settings: Any):
    from reamo.agent import Agent

    with console.status(f"Loading model {model!r} (the first run prepares the embedded default, ~30 s)..."):
        return Agent.from_pretrained(model, max_new_tokens=max_new_tokens, **settings)


def print_result(result) -> None:
    """Entities, relations, events and tool calls as tables."""
    entities = Table(title="Entities", show_lines=False)
    for column in ("text", "type", "span", "grounding"):
        entities.add_column(column)
    for entity in result.entities:
        span = f"{entity.span.start}-{entity.span.end}" if entity.span else "-"
        entities.add_row(entity.text, entity.type, span, _grounding_text(entity) or "-")
    console.print(entities)
    if "re" in result.tasks:
        relations = Table(title="Relations")
        for column in ("head", "relation", "tail"):
            relations.add_column(column)
        for rel in result.relations:
            relations.add_row(rel.head.text, rel.type, rel.tail.text)
        console.print(relations)
    if "ee" in result.tasks:
        events = Table(title="Events")
        for column in ("type", "trigger", "arguments"):
            events.add_column(column)
        for event in result.events:
            events.add_row(event.type, event.trigger.text, "; ".join(f"{a.role}: {a.entity.text}" for a in event.arguments))
        console.print(events)
    if result.tool_results:
        tools = Table(title="Tool calls")
        for column in ("call", "tool", "target", "outcome", "seconds"):
            tools.add_column(column)
        for tr in result.tool_results:
            outcome = tr.error.message if tr.error else ", ".join(g.kind for g in tr.groundings) or "nothing"
            tools.add_row(tr.call_id, tr.name, tr.target or "-", outcome, f"{tr.seconds:.2f}")
        console.print(tools)
    for problem in result.problems:
        err_console.print(f"[yellow]note:[/] {problem.stage}: {problem.message}")


def _grounding_text(entity) -> str:
    parts = []
    for g in entity.groundings:
        if g.kind == "image":
            parts.append("box " + ",".join(f"{v:.0f}" for v in g.box.xyxy) + (" +mask" if g.mask else ""))
        elif g.kind == "video":
            parts.append(f"track {len(g.frames)} frames {g.start:.1f}-{g.end:.1f}s" if g.frames else "track (empty)")
        elif g.kind == "audio":
            parts.append(f"audio {g.start:.2f}-{g.end:.2f}s")
        else:
            parts.append(f"no {g.modality} region")
    return "; ".join(parts)


@app.command()
def extract(
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Input text."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image file (JPEG, PNG, ...)."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="Audio file (WAV, FLAC, OGG)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Video file (MP4, ...)."),
    tasks: str = typer.Option("ner,re,ee", "--tasks", help="Comma-separated subset of ner,re,ee."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated entity types (default PER,ORG,LOC,OTHER)."),
    model: str = typer.Option("default", "--model", "-m", help="'default' or a saved Reamo model folder."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the Result as JSON to this file ('-' = stdout)."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1),
    preset: Optional[str] = typer.Option(None, "--preset", help="reamo-7b | reamo-7b-4bit: full-size model."),
    llm: Optional[str] = typer.Option(None, "--llm", help="With --preset: LLM folder or hub id."),
    imagebind_checkpoint: Optional[Path] = typer.Option(None, "--imagebind-checkpoint", help="With --preset."),
    sam2_checkpoint: Optional[Path] = typer.Option(None, "--sam2-checkpoint", help="With --preset."),
) -> None:
    """Extract grounded entities, relations and events from text and media."""
    for path, flag in ((image, "--image"), (audio, "--audio"), (video, "--video")):
        _check_file(path, flag)
    if not text and image is None and audio is None and video is None:
        _fail("nothing to extract from: pass --text and/or --image/--audio/--video")
    try:
        from reamo.agent import load_media_bundle

        media = load_media_bundle(image, audio, video)  # bad media fail here, before the model loads
        if preset is not None:
            from reamo.presets import agent_from_preset

            with console.status(f"Loading preset {preset}..."):
                agent = agent_from_preset(preset, llm_path=llm, imagebind_checkpoint=imagebind_checkpoint,
                                          sam2_checkpoint=sam2_checkpoint, max_new_tokens=max_new_tokens)
        else:
            agent = _load_agent(model, max_new_tokens)
        with console.status("Extracting..."):
            result = agent.extract(text=text, image=media.image, audio=media.audio, video=media.video, tasks=tasks,
                                   labels=labels.split(",") if labels else None)
    except ReamoError as err:
        _fail(str(err))
    if json_out is not None and str(json_out) == "-":
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        return
    print_result(result)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(result.model_dump_json(indent=2), encoding="utf-8")
        console.print(f"wrote {json_out}")


@app.command()
def chat(
    model: str = typer.Option("default", "--model", "-m"),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1),
) -> None:
    """Multi-turn chat in the terminal (empty line or Ctrl-D quits)."""
    try:
        agent = _load_agent(model, max_new_tokens)
    except ReamoError as err:
        _fail(str(err))
    messages: list[dict] = []
    while True:
        try:
            line = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        reply = agent.chat(messages)
        messages.append(reply)
        console.print(f"[bold green]reamo>[/] {reply['content']}")
        for call in reply.get("tool_calls", []):
            console.print(f"  tool call: {call['function']['name']} {json.dumps(call['function']['arguments'])}")


@app.command()
def demo(
    out: Path = typer.Option(Path("reamo-demo"), "--out", "-o", help="Folder for the results (JSON + pictures)."),
    model: str = typer.Option("default", "--model", "-m"),
) -> None:
    """Run the shipped examples end to end; write results JSON and rendered pictures to --out."""
    from reamo.demo import run_demo

    try:
        agent = _load_agent(model, 160)
        written = run_demo(agent, out, on_result=lambda name, result: (console.rule(name), print_result(result)))
    except ReamoError as err:
        _fail(str(err))
    console.print(f"demo finished: {len(written)} files in {out}")


@app.command()
def ui(
    model: str = typer.Option("default", "--model", "-m"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1 = this machine only)."),
    port: int = typer.Option(7860, "--port"),
    share: bool = typer.Option(False, "--share", help="Ask Gradio for a public share link."),
) -> None:
    """Start the Gradio chat UI."""
    try:
        from reamo.ui import launch

        launch(model=model, host=host, port=port, share=share)
    except ReamoError as err:
        _fail(str(err))


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="Stage config YAML (see tuning/configs/)."),
    stage: Optional[int] = typer.Option(None, "--stage", min=1, max=4, help="Override the config's stage."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest complete checkpoint."),
) -> None:
    """Tune a Reamo model: one of the four stages, from a YAML config."""
    _check_file(config, "--config")
    try:
        from reamo.tuning.trainer import train_from_yaml

        final = train_from_yaml(config, stage=stage, resume=resume or None)
    except ReamoError as err:
        _fail(str(err))
    console.print(f"trained model written to {final}")


@app.command("export-adapter")
def export_adapter(
    model: Path = typer.Argument(..., help="A tuned model folder, e.g. runs/default_smollm2/final."),
    out: Path = typer.Option(Path("reamo/weights/default/adapter"), "--out", "-o"),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16 (half the size), float16 or float32."),
) -> None:
    """Ship a tuned adapter as the embedded default's (weights cast to bfloat16, written atomically)."""
    try:
        from reamo.tuning.export import export_adapter as _export

        target = _export(model, out, dtype)
    except (ReamoError, ValueError) as err:
        _fail(str(err))
    console.print(f"adapter written to {target}")


@app.command("eval")
def evaluate(
    data: str = typer.Argument(..., help="gmner:dev | mnre:val | m2e2:dev | a jsonl file of examples"),
    model: str = typer.Option("default", "--model", "-m", help="'default', a model folder, 'spacy' or 'majority'."),
    out: Path = typer.Option(Path("reamo-eval"), "--out", "-o"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N examples."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Score the baselines in the same run."),
    image_dir: Optional[Path] = typer.Option(None, "--image-dir", help="Folder with the dataset's images, if you have them."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1),
    speech: bool = typer.Option(False, "--speech", help="Speech version: sentences spoken by espeak-ng, audio only."),
    triples: bool = typer.Option(False, "--triples", help="MNRE: do not give the entity pair (full triple extraction)."),
    greedy_pairs: bool = typer.Option(False, "--greedy-pairs", help="MNRE: decode greedily instead of ranking the relations."),
) -> None:
    """Score a model (and baselines) on a dataset; resumable; writes report.md, scores.json and plots."""
    try:
        from reamo.eval.runner import evaluate_model

        evaluate_model(data, model=model, out_dir=out, limit=limit, baselines=baselines, image_dir=image_dir,
                       max_new_tokens=max_new_tokens, speech=speech, triples=triples,
                       greedy_pairs=greedy_pairs)
    except ReamoError as err:
        _fail(str(err))
    report = out / "report.md"
    if report.is_file():
        console.print(report.read_text(encoding="utf-8"))


# Options both calibration commands take (the model, the recipe whose sentences stay out, the settings file).
_CALIBRATED_MODEL = typer.Option("default", "--model", "-m", help="'default' or a model folder.")
_TUNING_RECIPES = typer.Option(
    [Path("tuning/configs/default_smollm2.yaml"), Path("tuning/configs/default_smollm2_more.yaml"),
     Path("tuning/configs/default_smollm2_third.yaml"), Path("tuning/configs/default_smollm2_fourth.yaml"),
     Path("tuning/configs/default_smollm2_fifth.yaml")],
    "--config",
    help="The recipe(s) the model was tuned with, one --config per pass: their sentences are kept out.")
_SETTINGS_OUT = typer.Option(Path("reamo/weights/default/settings.json"), "--out", "-o")


@app.command("calibrate-pairs")
def calibrate_pairs(
    model: str = _CALIBRATED_MODEL,
    config: list[Path] = _TUNING_RECIPES,
    out: Path = _SETTINGS_OUT,
    limit: int = typer.Option(300, "--limit", min=10, help="Held-out MNRE train pairs to score."),
) -> None:
    """Calibrate the given-pair relation-vs-None margin on held-out MNRE train pairs (never dev); writes settings.json."""
    from reamo.eval.calibrate import calibrate

    _calibrate(calibrate, model, config, out, limit, max_new_tokens=48, pair_none_bias=None)


@app.command("calibrate-events")
def calibrate_events_command(
    model: str = _CALIBRATED_MODEL,
    config: list[Path] = _TUNING_RECIPES,
    out: Path = _SETTINGS_OUT,
    limit: int = typer.Option(300, "--limit", min=10, help="Held-out M2E2 train sentences to score."),
) -> None:
    """Calibrate the events-vs-None margin on held-out M2E2 train sentences (never dev); writes settings.json."""
    from reamo.eval.calibrate import calibrate_events

    _calibrate(calibrate_events, model, config, out, limit, max_new_tokens=160, event_none_bias=None)


def _calibrate(run: Any, model: str, config: list[Path], out: Path, limit: int, max_new_tokens: int,
               **undecided: Any) -> None:
    """Load the model with the decision being calibrated switched off, run the calibration, print its result."""
    try:
        agent = _load_agent(model, max_new_tokens, **undecided)
        result = run(agent, config, out, limit=limit)
    except ReamoError as err:
        _fail(str(err))
    console.print_json(result.model_dump_json())


@app.command()
def bench(
    model: str = typer.Option("default", "--model", "-m"),
    out: Path = typer.Option(Path("reamo-bench"), "--out", "-o"),
    repeats: int = typer.Option(3, "--repeats", min=1),
    quick: bool = typer.Option(False, "--quick", help="One repeat, few tokens: a smoke run."),
    load: bool = typer.Option(True, "--load/--no-load", help="Also time cold and cached model loading."),
    gpu: bool = typer.Option(True, "--gpu/--no-gpu", help="Also run the CUDA section when a GPU is present."),
    soak: Optional[int] = typer.Option(None, "--soak", min=1, help="Instead: N requests from 8 threads; RSS growth."),
) -> None:
    """Speed and memory: latency per input kind, load time, tokens/s, batching, peak RSS (bench.md + bench.json)."""
    from reamo.eval.bench import run_bench

    if soak is not None:
        from reamo.eval.soak import run_soak

        report = run_soak(_load_agent(model, 8), requests=soak)
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
        console.print_json(report.model_dump_json())
        return

    run_bench(model=model, out_dir=out, repeats=repeats, quick=quick, load=load, gpu=gpu)
    table = out / "bench.md"
    if table.is_file():
        console.print(table.read_text(encoding="utf-8"))


@app.command()
def batch(
    corpus: Path = typer.Option(..., "--corpus", help="jsonl or parquet rows: id, text, image?, audio?, video?"),
    out: Path = typer.Option(..., "--out", help="Output folder of part-*.parquet files (id, result_json)."),
    actors: int = typer.Option(2, "--actors", min=1, help="Agents running at once (one per GPU on a cluster)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    model: str = typer.Option("default", "--model", "-m"),
    tasks: str = typer.Option("ner,re,ee", "--tasks"),
    media_root: Optional[Path] = typer.Option(None, "--media-root", help="Folder that media paths are relative to."),
    resume: bool = typer.Option(True, "--resume/--no-resume"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join a Ray cluster ('auto')."),
) -> None:
    """Corpus-scale extraction with Ray Data (resumable)."""
    _check_file(corpus, "--corpus")
    try:
        from reamo.corpus import extract_corpus

        if ray_address:
            import ray

            ray.init(address=ray_address)
        stats = extract_corpus(corpus, out, agent_factory=model, num_actors=actors, batch_size=batch_size,
                               resume=resume, tasks=tasks, media_root=media_root)
    except ReamoError as err:
        _fail(str(err))
    console.print_json(stats.model_dump_json())


@app.command()
def memory(
    preset: str = typer.Option("reamo-7b-4bit", "--preset"),
    context: int = typer.Option(2048, "--context", min=1),
    batch_size: int = typer.Option(1, "--batch", min=1),
    training: bool = typer.Option(False, "--training"),
) -> None:
    """Estimate GPU memory for a preset before loading it (parameters, LoRA, optimizer, activations, KV cache)."""
    from reamo.memory import estimate

    try:
        console.print(estimate(preset, context=context, batch=batch_size, training=training).describe())
    except ReamoError as err:
        _fail(str(err))


def _register_subcommands() -> None:
    from reamo.kg.cli import kg_app

    app.add_typer(kg_app, name="kg")


_register_subcommands()


if __name__ == "__main__":
    app()
