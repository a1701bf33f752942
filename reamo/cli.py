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

from reamo import __version__, head_defaults
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
    from reamo.quiet import quiet_cli

    quiet_cli(verbose)  # results and real progress only: no third-party loading bars or known warnings (-v: bars)


def _fail(message: str) -> None:
    from rich.markup import escape

    # one line however narrow the terminal; brackets in the message (paths, lists) are text, not rich markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=2)


_FILE_KIND = {"--image": "an image file", "--audio": "an audio file", "--video": "a video file",
              "--config": "a YAML config file"}


def _check_file(path: Optional[Path], flag: str) -> None:
    if path is not None and path.is_dir():
        _fail(f"{flag} is a directory, not a file: {path}; give {_FILE_KIND.get(flag, 'a file')}")
    if path is not None and not path.is_file():
        _fail(f"{flag} file not found: {path}")


def _utf8_problem(text: str, what: str) -> Optional[str]:
    """Bytes that are not UTF-8 reach us surrogate-escaped (PEP 383): say so in one line, not a traceback later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = ord(text[err.start])
        byte = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"character U+{bad:04X}"
        return (f"{what} is not valid UTF-8 ({byte} at character {err.start}); re-encode the text as UTF-8 "
                "(e.g. iconv -f latin1 -t utf-8)")
    return None


def _check_utf8(text: Optional[str], flag: str) -> None:
    problem = _utf8_problem(text, flag) if text is not None else None
    if problem:
        _fail(problem)


def _check_tasks(tasks: str) -> str:
    """--tasks as the canonical comma-separated list, or a one-line error naming the valid tasks."""
    from reamo.schema import ALL_TASKS

    names = [t.strip().lower() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in ALL_TASKS]
    if unknown or not names:
        _fail(f"--tasks: unknown task(s) {', '.join(unknown) or repr(tasks)}; choose from {', '.join(ALL_TASKS)} "
              "(comma-separated, e.g. --tasks ner,re)")
    return ",".join(t for t in ALL_TASKS if t in names)


def _check_labels(labels: Optional[str]) -> Optional[list[str]]:
    """--labels "PER,ORG" as a list of entity types (None: the defaults), or a one-line error."""
    if labels is None:
        return None
    from reamo.prompting import resolve_labels

    try:
        return resolve_labels(labels).entity_types
    except ReamoError:
        _fail(f"--labels {labels!r}: give comma-separated, non-empty entity types, e.g. --labels PER,ORG,LOC")
    return None  # not reached: _fail exits


def _load_agent(model: str, max_new_tokens: int, **settings: Any):
    from reamo.agent import Agent

    with console.status(f"Loading model {model!r} (the first run prepares the embedded default, ~30 s)..."):
        return Agent.from_pretrained(model, max_new_tokens=max_new_tokens, **settings)


def _score_text(score: float | None) -> str:
    return "-" if score is None else f"{score:.2f}"


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
        for column in ("head", "relation", "tail", "margin"):
            relations.add_column(column)
        for rel in result.relations:  # margin: how far the answer beat "None" (above the calibrated bias)
            relations.add_row(rel.head.text, rel.type, rel.tail.text, _score_text(rel.score))
        console.print(relations)
    if "ee" in result.tasks:
        events = Table(title="Events")
        for column in ("type", "trigger", "arguments", "margin"):
            events.add_column(column)
        for event in result.events:
            events.add_row(event.type, event.trigger.text, "; ".join(
                f"{a.role}: {a.entity.text}" + (f" ({a.score:.2f})" if a.score is not None else "")
                for a in event.arguments), _score_text(event.score))
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


_PRECISION = typer.Option(
    "float32", "--precision",
    help="float32 (the model card's answers) | bfloat16 (2-3x faster on CPUs with native bfloat16, answers differ in "
         "close calls) | auto (bfloat16 where native)")


def _check_precision(precision: str) -> str:
    if precision not in ("float32", "bfloat16", "auto"):
        _fail(f"--precision must be float32, bfloat16 or auto, got {precision!r}")
    return precision


@app.command()
def extract(
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Input text."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image file (JPEG, PNG, ...)."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="Audio file (WAV, FLAC, OGG)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Video file (MP4, ...)."),
    tasks: str = typer.Option("ner,re,ee", "--tasks", help="Comma-separated subset of ner,re,ee (entities, relations, events)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated entity types (default PER,ORG,LOC,OTHER)."),
    model: str = typer.Option("default", "--model", "-m", help="'default' or a saved Reamo model folder."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the Result as JSON to this file ('-' = stdout)."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1),
    preset: Optional[str] = typer.Option(None, "--preset", help="reamo-7b | reamo-7b-4bit: full-size model."),
    llm: Optional[str] = typer.Option(None, "--llm", help="With --preset: LLM folder or hub id."),
    imagebind_checkpoint: Optional[Path] = typer.Option(None, "--imagebind-checkpoint", help="With --preset."),
    sam2_checkpoint: Optional[Path] = typer.Option(None, "--sam2-checkpoint", help="With --preset."),
    precision: str = _PRECISION,
) -> None:
    """Extract grounded entities, relations and events from text and media."""
    # Everything the user typed is checked here, before the model loads (~10 s): a typo costs no waiting.
    _check_utf8(text, "--text")
    for path, flag in ((image, "--image"), (audio, "--audio"), (video, "--video")):
        _check_file(path, flag)
    if not (text and text.strip()) and image is None and audio is None and video is None:
        blank = "--text is empty or only whitespace; " if text is not None else ""
        _fail(f"nothing to extract from: {blank}pass --text and/or --image/--audio/--video")
    tasks = _check_tasks(tasks)
    label_list = _check_labels(labels)
    _check_precision(precision)
    try:
        from reamo.agent import load_media_bundle

        media = load_media_bundle(image, audio, video)  # bad media fail here, before the model loads
        if preset is not None:
            from reamo.presets import agent_from_preset

            with console.status(f"Loading preset {preset}..."):
                agent = agent_from_preset(preset, llm_path=llm, imagebind_checkpoint=imagebind_checkpoint,
                                          sam2_checkpoint=sam2_checkpoint, max_new_tokens=max_new_tokens)
        else:
            agent = _load_agent(model, max_new_tokens, precision=precision)
        with console.status("Extracting..."):
            result = agent.extract(text=text, image=media.image, audio=media.audio, video=media.video, tasks=tasks,
                                   labels=label_list)
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
    if hasattr(sys.stdin, "reconfigure"):  # a non-UTF-8 line then arrives surrogate-escaped: one error, chat goes on
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        try:
            line = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            break
        except UnicodeDecodeError as err:  # a strict UTF-8 stdin that could not be reconfigured
            err_console.print(f"[bold red]error:[/] that line is not valid UTF-8 ({err.reason}); type it again")
            continue
        if not line.strip():
            break
        problem = _utf8_problem(line, "that line")
        if problem:
            err_console.print(f"[bold red]error:[/] {problem}", soft_wrap=True)
            continue
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
    kg_db: Optional[Path] = typer.Option(None, "--kg-db", help="Graph folder (`reamo kg build`) for the graph tab."),
) -> None:
    """Start the Gradio chat UI."""
    try:
        from reamo.ui import launch

        launch(model=model, host=host, port=port, share=share, kg_db=kg_db)
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


@app.command("soup-adapters")
def soup_adapters(
    out: Path = typer.Argument(..., help="Model folder to write (the first source's files, the summed adapter)."),
    sources: list[str] = typer.Argument(..., help="FOLDER=WEIGHT per adapter, e.g. runs/a/final=0.5 "
                                                  "runs/b/final=0.5 (weights may be negative)."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16, float16 or float32."),
) -> None:
    """Write the adapter that adds the weighted sum of what the given LoRA adapters add (a model soup; exact)."""
    parsed = []
    for source in sources:
        folder, _, weight = source.rpartition("=")
        try:
            value = float(weight) if folder else None
        except ValueError:
            value = None
        if value is None:
            _fail(f"{source!r}: write each source as FOLDER=WEIGHT, e.g. runs/default_smollm2_sixth/final=0.5")
        parsed.append((folder, value))
    try:
        from reamo.tuning.soup import soup_adapters as _soup

        target = _soup(parsed, out, dtype)
    except (ReamoError, ValueError) as err:
        _fail(str(err))
    console.print(f"adapter soup written to {target}; calibrate its margins before use, e.g. reamo calibrate-pairs "
                  f"--model {target} --config <its recipes> --out {target}/settings.json (likewise calibrate-triples, "
                  "calibrate-events)")


_CALIBRATED_MODEL = typer.Option("default", "--model", "-m", help="'default' or a model folder.")


def _head_out(name: str) -> Any:
    return typer.Argument(..., help=f"Folder to write {name}.safetensors + .json into: the model folder (maintainers "
                                    "refitting the shipped default: reamo/weights/default).")


def _head_layers(defaults: tuple[int, ...]) -> Any:
    return typer.Option(list(defaults), "--layer", min=1, help="A hidden state read at the answer start (0 = "
                        "embeddings); repeat for several, concatenated.")


def _question_end_layers(defaults: tuple[int, ...], candidate: str) -> Any:
    return typer.Option(list(defaults), "--question-end-layer", min=1, help=f"A hidden state read at the "
                        f"{candidate}'s last token in the question; repeat for several.")


_NO_QUESTION_END = typer.Option(False, "--no-question-end", help="Read the answer start only.")


def _chosen_reads(layers: list[int], question_end_layers: list[int], no_question_end: bool) -> Any:
    """A fit command's --layer / --question-end-layer / --no-question-end as the head's reads."""
    from reamo.tuning.heads import head_reads

    return head_reads(layers, [] if no_question_end else question_end_layers)


def _head_weight_decay(default: float) -> Any:
    return typer.Option(default, "--weight-decay", min=0.0, help="L2 penalty of the fit.")


def _fit_head(model: str, max_new_tokens: int, layer: Any, fit: Any) -> Any:
    """Load the model, refuse a --layer it lacks, fit a decision head with `fit(agent)`; errors end the command.
    `layer`: one layer, or the head's reads."""
    try:
        agent = _load_agent(model, max_new_tokens)
        layers = agent.model.llm.config.get_text_config().num_hidden_layers
        from reamo.model.decision_heads import as_reads

        layer = max(read.layer for read in as_reads(layer))
        if layer > layers:
            _fail(f"--layer {layer}: the model has {layers} layers; choose 1-{layers}")
        return fit(agent)
    except (ReamoError, ValueError) as err:
        _fail(str(err))


_M2E2_HEAD_LIMIT = typer.Option(None, "--limit", min=10, help="Only the first N M2E2 train sentences.")


def _fit_m2e2_head(out: Path, model: str, layer: Any, weight_decay: float, limit: Optional[int], fitter: Any,
                   name: str, counted: str, **options: Any) -> None:
    """Fit a head with `fitter` (given `options` too) on the M2E2 train sentences the event decisions are tuned on;
    save it as `name`."""
    from reamo.tuning.decisions import m2e2_for_decisions

    def fit(agent: Any) -> Any:
        examples = m2e2_for_decisions("train")[:limit]
        return fitter(agent, examples, layer=layer, weight_decay=weight_decay,
                      source=f"{model}: {len(examples)} M2E2 train sentences (calibration slice kept out)", **options)

    head = _fit_head(model, 160, layer, fit)
    head.save(out, name)
    console.print(f"{name.replace('_', ' ')} written to {out} ({head.config.n_examples} candidates, "
                  f"{head.config.n_positive} {counted}); calibrate its margin: reamo calibrate-events --model <the "
                  "model> --out <its settings.json>")


@app.command("fit-trigger-head")
def fit_trigger_head_command(
    out: Path = _head_out("trigger_head"),
    model: str = _CALIBRATED_MODEL,
    layers: list[int] = _head_layers(head_defaults.DEFAULT_TRIGGER_LAYERS),
    question_end_layers: list[int] = _question_end_layers(head_defaults.DEFAULT_TRIGGER_QUESTION_END_LAYERS,
                                                          "trigger word"),
    no_question_end: bool = _NO_QUESTION_END,
    weight_decay: float = _head_weight_decay(head_defaults.DEFAULT_WEIGHT_DECAY),
    max_invented: float = typer.Option(
        head_defaults.DEFAULT_MAX_INVENTED, "--max-invented", min=0.0, max=1.0,
        help="The margin may give at most this share of the event-free train sentences an event (out of fold); "
             "1 lets F1 alone choose."),
    limit: Optional[int] = _M2E2_HEAD_LIMIT,
) -> None:
    """Fit the trigger head (event type of a trigger candidate read from the LLM's hidden states) on the M2E2 train
    sentences the event decisions are tuned on, with its out-of-fold "None" margin (best F1 within the bound on
    invented events); then `reamo calibrate-events`
    checks that margin on the held-out slice and calibrates the argument margins on the events it keeps."""
    from reamo.model.embedded_default import TRIGGER_HEAD_NAME
    from reamo.tuning.heads import fit_trigger_head

    reads = _chosen_reads(layers, question_end_layers, no_question_end)
    _fit_m2e2_head(out, model, reads, weight_decay, limit, fit_trigger_head, TRIGGER_HEAD_NAME, "triggers",
                   max_invented=None if max_invented >= 1.0 else max_invented)


def _fit_mnre_head(out: Path, model: str, layer: Any, weight_decay: float, limit: Optional[int], load: Any,
                   fitter: Any, name: str, unit: str, calibrate: str) -> None:
    """Fit a head with `fitter` on `load(limit)` (MNRE train data outside the calibration slice: all of it, or a
    seeded sample); save it as `name`."""

    def fit(agent: Any) -> Any:
        examples = load(limit)
        which = f"all {len(examples)}" if limit is None or len(examples) < limit else \
            f"a sample (seed 0) of {len(examples)}"
        return fitter(agent, examples, layer=layer, weight_decay=weight_decay,
                      source=f"{model}: {which} MNRE train {unit} (calibration slice kept out)")

    head = _fit_head(model, 48, layer, fit)
    head.save(out, name)
    console.print(f"{name.replace('_', ' ')} written to {out} ({head.config.n_examples} pairs, "
                  f"{head.config.n_positive} related); calibrate its margin: {calibrate} --model <the model> --out "
                  "<its settings.json>")


@app.command("fit-relation-head")
def fit_relation_head_command(
    out: Path = _head_out("relation_head"),
    model: str = _CALIBRATED_MODEL,
    layers: list[int] = _head_layers(head_defaults.DEFAULT_RELATION_LAYERS),
    question_end_layers: list[int] = _question_end_layers(head_defaults.DEFAULT_RELATION_QUESTION_END_LAYERS,
                                                          "pair line"),
    no_question_end: bool = _NO_QUESTION_END,
    weight_decay: float = _head_weight_decay(head_defaults.DEFAULT_RELATION_WEIGHT_DECAY),
    limit: Optional[int] = typer.Option(None, "--limit", min=10, help="Only a seeded sample of N MNRE train pairs "
                                        "(default: every pair outside the calibration slice, 11,061)."),
) -> None:
    """Fit the relation head (relation of a given entity pair read from the LLM's hidden state) on MNRE train pairs
    outside the calibration slice; then calibrate its margin with `reamo calibrate-pairs`."""
    from reamo.model.embedded_default import RELATION_HEAD_NAME
    from reamo.tuning.heads import fit_relation_head, relation_training_pairs

    reads = _chosen_reads(layers, question_end_layers, no_question_end)
    _fit_mnre_head(out, model, reads, weight_decay, limit, relation_training_pairs, fit_relation_head,
                   RELATION_HEAD_NAME, "pairs", "reamo calibrate-pairs / calibrate-triples")


@app.command("fit-argument-head")
def fit_argument_head_command(
    out: Path = _head_out("argument_head"),
    model: str = _CALIBRATED_MODEL,
    layers: list[int] = _head_layers(head_defaults.DEFAULT_ARGUMENT_LAYERS),
    question_end_layers: list[int] = _question_end_layers(head_defaults.DEFAULT_ARGUMENT_QUESTION_END_LAYERS,
                                                          "argument candidate"),
    no_question_end: bool = _NO_QUESTION_END,
    weight_decay: float = _head_weight_decay(head_defaults.DEFAULT_ARGUMENT_WEIGHT_DECAY),
    limit: Optional[int] = _M2E2_HEAD_LIMIT,
) -> None:
    """Fit the argument head (role of an argument candidate in an event, read from the LLM's hidden states) on the
    gold events of the M2E2 train sentences the event decisions are tuned on; then calibrate its margin with
    `reamo calibrate-events`."""
    from reamo.model.embedded_default import ARGUMENT_HEAD_NAME
    from reamo.tuning.heads import fit_argument_head

    reads = _chosen_reads(layers, question_end_layers, no_question_end)
    _fit_m2e2_head(out, model, reads, weight_decay, limit, fit_argument_head, ARGUMENT_HEAD_NAME, "arguments")


@app.command("fit-triple-head")
def fit_triple_head_command(
    out: Path = _head_out("triple_head"),
    model: str = _CALIBRATED_MODEL,
    layers: list[int] = _head_layers(head_defaults.DEFAULT_TRIPLE_LAYERS),
    question_end_layers: list[int] = _question_end_layers(head_defaults.DEFAULT_TRIPLE_QUESTION_END_LAYERS,
                                                          "pair line"),
    no_question_end: bool = _NO_QUESTION_END,
    weight_decay: float = _head_weight_decay(head_defaults.DEFAULT_TRIPLE_WEIGHT_DECAY),
    limit: Optional[int] = typer.Option(None, "--limit", min=10, help="Only a seeded sample of N MNRE train "
                                        "sentences (default: every sentence outside the calibration slice, 6,621)."),
) -> None:
    """Fit the triple head (relation of an ordered pair of a sentence's entities read from the LLM's hidden state,
    for full triple extraction) on every entity pair of the MNRE train sentences outside the calibration slice, in
    both directions; then calibrate its margin with `reamo calibrate-triples`."""
    from reamo.model.embedded_default import TRIPLE_HEAD_NAME
    from reamo.tuning.heads import fit_triple_head, triple_training_sentences

    reads = _chosen_reads(layers, question_end_layers, no_question_end)
    _fit_mnre_head(out, model, reads, weight_decay, limit, triple_training_sentences, fit_triple_head,
                   TRIPLE_HEAD_NAME, "sentences", "reamo calibrate-triples")


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
    precision: str = _PRECISION,
) -> None:
    """Score a model (and baselines) on a dataset; resumable; writes report.md, scores.json and plots."""
    _check_precision(precision)
    try:
        from reamo.eval.runner import evaluate_model

        evaluate_model(data, model=model, out_dir=out, limit=limit, baselines=baselines, image_dir=image_dir,
                       max_new_tokens=max_new_tokens, speech=speech, triples=triples,
                       greedy_pairs=greedy_pairs, precision=precision)
    except ReamoError as err:
        _fail(str(err))
    report = out / "report.md"
    if report.is_file():
        console.print(report.read_text(encoding="utf-8"))


# Options both calibration commands take (the model, the recipe whose sentences stay out, the settings file).
# The shipped default's six tuning passes and its writer's pass; the recipes ship in the installed package
# (reamo.tuning, configs/).
_DEFAULT_RECIPES = ("default_smollm2.yaml", "default_smollm2_more.yaml", "default_smollm2_third.yaml",
                    "default_smollm2_fourth.yaml", "default_smollm2_fifth.yaml", "default_smollm2_sixth.yaml",
                    "default_smollm2_writer.yaml")
_TUNING_RECIPES = typer.Option(
    None,
    "--config",
    help="The recipe(s) the model was tuned with, one --config per pass: their sentences are kept out "
         f"(default: the shipped default's passes, {', '.join(_DEFAULT_RECIPES)}, from the installed package).")
_SETTINGS_OUT = typer.Option(
    None, "--out", "-o",
    help="Settings file to write (default: your settings.json in the user config folder, or $REAMO_CONFIG_DIR, "
         "which the default model reads over the shipped settings). Maintainers re-calibrating the shipped "
         "default: --out reamo/weights/default/settings.json in the repository.")


def _shipped_recipes() -> list[Path]:
    """The default recipes inside the installed `reamo.tuning` package, wherever the command is run from."""
    import importlib.util

    spec = importlib.util.find_spec("reamo.tuning")  # finds the package folder without importing it
    folder = Path(next(iter(spec.submodule_search_locations or []))) / "configs" if spec else None
    recipes = [folder / name for name in _DEFAULT_RECIPES] if folder else []
    missing = [str(p) for p in recipes if not p.is_file()] or ([] if recipes else ["reamo.tuning/configs"])
    if missing:
        _fail(f"the shipped tuning recipes are missing ({', '.join(missing)}); reinstall reamo or pass --config")
    return recipes


def _settings_target(out: Optional[Path]) -> Path:
    """--out, else the user's settings file (its folder made if needed)."""
    from reamo.model.embedded_default import user_settings_path

    target = out if out is not None else user_settings_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


@app.command("calibrate-pairs")
def calibrate_pairs(
    model: str = _CALIBRATED_MODEL,
    config: Optional[list[Path]] = _TUNING_RECIPES,
    out: Optional[Path] = _SETTINGS_OUT,
    limit: int = typer.Option(300, "--limit", min=10, help="Held-out MNRE train pairs to score."),
) -> None:
    """Calibrate the given-pair relation-vs-None margin on held-out MNRE train pairs (never dev); writes settings.json
    (yours, in the user config folder, unless --out)."""
    from reamo.eval.calibrate import calibrate

    _calibrate(calibrate, model, config, out, limit, max_new_tokens=48, pair_none_bias=None)


@app.command("calibrate-events")
def calibrate_events_command(
    model: str = _CALIBRATED_MODEL,
    config: Optional[list[Path]] = _TUNING_RECIPES,
    out: Optional[Path] = _SETTINGS_OUT,
    limit: int = typer.Option(500, "--limit", min=10, help="Held-out M2E2 train sentences to score."),
) -> None:
    """Calibrate the trigger-vs-None and role-vs-None margins of event extraction by candidate scoring on held-out
    M2E2 train sentences (never dev); writes settings.json (yours, in the user config folder, unless --out)."""
    from reamo.eval.calibrate import calibrate_event_decisions

    _calibrate(calibrate_event_decisions, model, config, out, limit, max_new_tokens=160)


@app.command("calibrate-triples")
def calibrate_triples_command(
    model: str = _CALIBRATED_MODEL,
    config: Optional[list[Path]] = _TUNING_RECIPES,
    out: Optional[Path] = _SETTINGS_OUT,
    limit: int = typer.Option(300, "--limit", min=10, help="Held-out MNRE train sentences to score."),
) -> None:
    """Calibrate the relation-vs-None margin of full relation extraction (every pair of extracted entities) on
    held-out MNRE train sentences (never dev); writes settings.json (yours, in the user config folder, unless --out)."""
    from reamo.eval.calibrate import calibrate_triples

    _calibrate(calibrate_triples, model, config, out, limit, max_new_tokens=160)


def _calibrate(run: Any, model: str, config: Optional[list[Path]], out: Optional[Path], limit: int,
               max_new_tokens: int, **undecided: Any) -> None:
    """Load the model with the decision being calibrated switched off, run the calibration, print its result."""
    recipes = list(config) if config else _shipped_recipes()
    for recipe in recipes:
        _check_file(recipe, "--config")
    target = _settings_target(out)
    try:
        agent = _load_agent(model, max_new_tokens, **undecided)
        result = run(agent, recipes, target, limit=limit)
    except ReamoError as err:
        _fail(str(err))
    console.print_json(json.dumps({k: v.model_dump() for k, v in result.items()}) if isinstance(result, dict)
                       else result.model_dump_json())
    console.print(f"wrote {target}")


@app.command()
def bench(
    model: str = typer.Option("default", "--model", "-m"),
    out: Path = typer.Option(Path("reamo-bench"), "--out", "-o"),
    repeats: int = typer.Option(3, "--repeats", min=1),
    quick: bool = typer.Option(False, "--quick", help="One repeat, few tokens: a smoke run."),
    load: bool = typer.Option(True, "--load/--no-load", help="Also time cold and cached model loading."),
    gpu: bool = typer.Option(True, "--gpu/--no-gpu", help="Also run the CUDA section when a GPU is present."),
    soak: Optional[int] = typer.Option(None, "--soak", min=1, help="Instead: N requests from 8 threads; RSS growth."),
    precision: str = _PRECISION,
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

    _check_precision(precision)
    run_bench(model=model, out_dir=out, repeats=repeats, quick=quick, load=load, gpu=gpu, precision=precision)
    table = out / "bench.md"
    if table.is_file():
        console.print(table.read_text(encoding="utf-8"))


@app.command()
def batch(
    corpus: Path = typer.Option(..., "--corpus",
                                help="jsonl or parquet rows (a file or a folder of them): id, text, image?, audio?, video?"),
    out: Path = typer.Option(..., "--out", help="Output folder of part-*.parquet files (id, result_json)."),
    actors: int = typer.Option(2, "--actors", min=1, help="Agents running at once (one per GPU on a cluster)."),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    model: str = typer.Option("default", "--model", "-m"),
    tasks: str = typer.Option("ner,re,ee", "--tasks", help="Comma-separated subset of ner,re,ee."),
    media_root: Optional[Path] = typer.Option(None, "--media-root", help="Folder that media paths are relative to."),
    resume: bool = typer.Option(True, "--resume/--no-resume"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join a Ray cluster ('auto')."),
) -> None:
    """Corpus-scale extraction with Ray Data (resumable)."""
    if not corpus.exists():
        _fail(f"--corpus not found: {corpus}; give a jsonl or parquet file (or a folder of them)")
    tasks = _check_tasks(tasks)
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
    measure: bool = typer.Option(False, "--measure", help="Measure instead: build the preset's exact shapes with "
                                 "random weights on this GPU (CPU: --preset tiny only) before any download."),
    new_tokens: int = typer.Option(32, "--new-tokens", min=1, help="With --measure: tokens generated after --context."),
    speed_batch: int = typer.Option(16, "--speed-batch", min=1, help="With --measure: tokens/s at batch 1 and this."),
    speed_tokens: int = typer.Option(128, "--speed-tokens", min=1, help="With --measure: new tokens per speed run."),
    decoding: str = typer.Option("eager,static,compile", "--decoding", help="With --measure: decoding modes to time."),
    train_rows: int = typer.Option(4, "--train-rows", min=0, help="With --measure: QLoRA step rows (0 = no step)."),
    train_seq: int = typer.Option(1024, "--train-seq", min=2, help="With --measure: QLoRA step sequence length."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="With --measure: also write the report as JSON."),
) -> None:
    """Estimate GPU memory for a preset before loading it (parameters, LoRA, optimizer, activations, KV cache);
    with --measure, measure it: load memory, the peak at --context x --batch, tokens/s per decoding mode and a
    QLoRA step's memory, with random weights of the preset's shapes."""
    from reamo.memory import estimate

    try:
        if not measure:
            console.print(estimate(preset, context=context, batch=batch_size, training=training).describe())
            return
        from reamo.measure import measure as run_measure

        with console.status(f"Measuring {preset} with random weights..."):
            report = run_measure(preset, context=context, batch=batch_size, new_tokens=new_tokens,
                                 speed_batch=speed_batch, speed_tokens=speed_tokens,
                                 decoding=tuple(m.strip() for m in decoding.split(",") if m.strip()),
                                 train_rows=train_rows or None, train_seq=train_seq)
    except ReamoError as err:
        _fail(str(err))
    console.print(report.describe(), markup=False, highlight=False, soft_wrap=True)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(report.model_dump_json(indent=2), encoding="utf-8")
        console.print(f"wrote {json_out}")


def _register_subcommands() -> None:
    from reamo.kg.cli import kg_app

    app.add_typer(kg_app, name="kg")


_register_subcommands()


if __name__ == "__main__":
    app()
