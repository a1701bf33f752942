"""The Gradio chat UI: type text, attach an image / audio / video, pick tasks, and read back every extraction with
its grounding drawn (highlighted spans, masks and boxes, entity clips on the waveform, tracked frames).

One agent serves every request (its model lock serializes generation); `concurrency_limit` bounds how many
requests run their media tools at once. Every failure becomes a message in the chat, never a dead server.
The same extraction is an API endpoint (`api_name="extract"`) for `gradio_client`, and the Blocks mount into a
FastAPI app with `mount`.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from reamo.errors import ConfigError, ExtractionError, MediaError, ReamoError
from reamo.media import MediaLimits
from reamo.render import draw_audio, draw_video_contact_sheet
from reamo.ui import views
from reamo.ui.examples import UIExample, build_examples, shared_media_dir
from reamo.ui.pipeline import UI_LIMITS, Outcome, Stage, extract_once, run_request

logger = logging.getLogger(__name__)

TASK_CHOICES = [("NER (entities)", "ner"), ("RE (relations)", "re"), ("EE (events)", "ee")]
MAX_FILE_SIZE = "50mb"
FILE_TTL_S = 3600.0
"""Result JSON files and audio clips written for downloads are deleted after this long."""


class AgentHolder:
    """The one shared agent, built on first use (thread-safe) so the server can start before the model loads."""

    def __init__(self, agent_or_factory: Any) -> None:
        if callable(agent_or_factory) and not hasattr(agent_or_factory, "extract"):
            self._factory: Callable[[], Any] | None = agent_or_factory
            self._agent: Any = None
        else:
            self._factory, self._agent = None, agent_or_factory
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._agent is None:
            with self._lock:
                if self._agent is None:
                    assert self._factory is not None
                    started = time.perf_counter()
                    self._agent = self._factory()
                    logger.info("agent ready in %.1f s", time.perf_counter() - started)
        return self._agent


class FileStore:
    """Temp files this app hands to the browser (result JSON, audio clips); old ones are pruned on each write."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="reamo-ui-"))
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, suffix: str, data: bytes) -> str:
        self.prune()
        path = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}{suffix}"
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(data)
        temporary.replace(path)
        return str(path)

    def prune(self) -> None:
        cutoff = time.time() - FILE_TTL_S
        for path in self.folder.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                continue


def error_message(error: BaseException) -> str:
    """A reader-facing explanation of a failed request."""
    if isinstance(error, MediaError):
        return f"⚠️ **Could not use the upload.** {error}"
    if isinstance(error, ConfigError):
        return f"⚠️ **Nothing was extracted.** {error}"
    if isinstance(error, ReamoError) and not isinstance(error, ExtractionError):
        return f"⚠️ **Reamo could not run this request.** {error}"
    what = str(error) if isinstance(error, ExtractionError) else f"{type(error).__name__}: {error}"
    return (
        f"⚠️ **The model failed on this request** ({what}). "
        "The server is still running: try again, or with a shorter text or smaller file."
    )


def _message_parts(message: Any) -> tuple[str, list[str]]:
    """MultimodalTextbox value -> (text, file paths)."""
    if message is None:
        return "", []
    if isinstance(message, str):
        return message, []
    text = message.get("text") or ""
    files = [f if isinstance(f, str) else f.get("path") for f in message.get("files") or []]
    return text, [f for f in files if f]


def build_app(
    agent: Any,
    *,
    limits: MediaLimits = UI_LIMITS,
    concurrency_limit: int = 2,
    examples: list[UIExample] | None = None,
    examples_dir: Path | None = None,
    title: str = "Reamo — grounded multimodal information extraction",
    kg_db: str | Path | None = None,
) -> gr.Blocks:
    """The chat UI around `agent` (an Agent, or a no-argument factory called on the first request).

    `examples` defaults to `build_examples(examples_dir or a temp dir)`; pass [] for none. `kg_db` is the one graph
    folder the knowledge-graph tab draws from (clients cannot name another); None leaves the tab unconfigured.
    """
    kg_db = _check_kg_db(kg_db)
    holder = AgentHolder(agent)
    store = FileStore()
    if examples is None:
        examples = build_examples(examples_dir or Path(tempfile.mkdtemp(prefix="reamo-ui-examples-")))

    def hidden() -> dict[str, Any]:
        return gr.update(value=None, visible=False)

    def respond(message: Any, history: list[dict[str, Any]] | None, tasks: list[str], labels: str) -> Iterator[tuple]:
        """Stream one turn: the user's message, progress as a pending 'thought', then the answer and panels."""
        text, files = _message_parts(message)
        history = list(history or [])
        if text.strip():
            history.append({"role": "user", "content": text})
        for path in files:
            history.append({"role": "user", "content": {"path": path}})
        if not text.strip() and not files:
            history.append({"role": "assistant", "content": error_message(ConfigError(
                "type some text and/or attach an image, audio or video first"))})
            yield (history, None, *[gr.skip()] * 9)
            return
        steps: list[str] = []
        progress = {"role": "assistant", "content": "", "metadata": {"title": "⏳ starting...", "status": "pending"}}
        history.append(progress)
        yield (history, None, *[gr.skip()] * 9)
        outcome: Outcome | None = None
        try:
            for item in run_request(holder.get(), text, files, tasks, labels, limits):
                if isinstance(item, Stage):
                    steps.append(item.message)
                    progress["metadata"] = {"title": f"⏳ {item.message}", "status": "pending"}
                    progress["content"] = "\n".join(f"- {s}" for s in steps)
                    yield (history, gr.skip(), *[gr.skip()] * 9)
                else:
                    outcome = item
        except Exception as error:
            if not isinstance(error, ReamoError):
                logger.exception("request failed")
            progress["metadata"] = {"title": "stopped", "status": "done"}
            history.append({"role": "assistant", "content": error_message(error)})
            yield (history, gr.skip(), *[gr.skip()] * 9)
            return
        assert outcome is not None
        result = outcome.result
        progress["metadata"] = {"title": f"done in {outcome.seconds:.1f} s", "status": "done",
                                "duration": round(outcome.seconds, 2)}
        history.append({"role": "assistant", "content": views.answer_markdown(result, outcome.seconds, outcome.notes)})
        yield (history, gr.skip(), *panels(outcome))

    def panels(outcome: Outcome) -> list[Any]:
        result, media = outcome.result, outcome.media
        image_value = hidden()
        if media.image is not None:
            image_value = gr.update(
                value=(media.image.to_pil(), views.image_annotations(media.image, result)),
                color_map=views.annotation_colours(result), visible=True,
            )
        waveform, clip_choice, clip_audio = hidden(), gr.update(choices=[], value=None, visible=False), hidden()
        if media.audio is not None:
            waveform = gr.update(value=draw_audio(media.audio, result), visible=True)
            clips = [(label, store.write(".wav", views.wav_bytes(*clip))) for label, clip in views.audio_clips(media, result)]
            if clips:
                clip_choice = gr.update(choices=clips, value=clips[0][1], visible=True)
                clip_audio = gr.update(value=clips[0][1], visible=True)
        gallery = hidden()
        if media.video is not None:
            frames = [(draw_video_contact_sheet(media.video, result), "all sampled frames")]
            frames += views.video_frames(media, result)
            gallery = gr.update(value=frames, visible=True)
        return [
            gr.update(value=views.highlighted(result), color_map=views.colour_map(result)),
            gr.update(value=views.table_rows(result) or [["-", "-", "nothing found", "", ""]]),
            image_value,
            waveform,
            clip_choice,
            clip_audio,
            gallery,
            views.tool_log(result),
            store.write(".json", result.model_dump_json(indent=2).encode("utf-8")),
        ]

    def api_extract(text: str | None, file: str | None, tasks: list[str] | None, labels: str | None) -> dict[str, Any]:
        """Text + optional image/audio/video + tasks -> the Result as JSON (errors come back as gr.Error)."""
        try:
            outcome = extract_once(holder.get(), text or "", [file] if file else [], tasks or [], labels, limits)
        except ReamoError as error:
            raise gr.Error(str(error), title=type(error).__name__) from error
        except Exception as error:
            logger.exception("API request failed")
            raise gr.Error(error_message(error).replace("⚠️ ", "").replace("**", "")) from error
        return json.loads(outcome.result.model_dump_json())

    with gr.Blocks(title="Reamo", fill_width=True) as app:
        gr.Markdown(
            f"## {title}\nType a sentence, attach an image, audio clip or video (optional), choose the tasks and "
            "press Enter. Every entity comes back with where it is: its characters in the text, its box and mask "
            "in the image, its time span in the audio, its track in the video."
        )
        with gr.Tab("Chat"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=5):
                    chatbot = gr.Chatbot(label="Reamo", height=520, elem_id="reamo-chat", buttons=["copy"])
                    box = gr.MultimodalTextbox(
                        placeholder="Text to analyse; attach an image, audio or video with the clip button",
                        file_types=["image", "audio", "video"], file_count="multiple", sources=["upload"],
                        show_label=False, elem_id="reamo-input",
                    )
                    with gr.Row():
                        tasks = gr.CheckboxGroup(TASK_CHOICES, value=["ner", "re", "ee"], label="Tasks",
                                                 elem_id="reamo-tasks")
                        labels = gr.Textbox(label="Entity types (optional)", placeholder="PER, ORG, LOC, OTHER",
                                            elem_id="reamo-labels")
                    if examples:
                        example_block = gr.Examples(
                            examples=[[{"text": e.text, "files": [e.file] if e.file else []}, e.tasks, e.labels]
                                      for e in examples],
                            example_labels=[e.label for e in examples],
                            inputs=[box, tasks, labels], label="Examples (click one to run it)",
                        )
                with gr.Column(scale=6):
                    spans = gr.HighlightedText(label="Entities in the text", show_legend=True,
                                               combine_adjacent=False, elem_id="reamo-spans")
                    table = gr.Dataframe(headers=views.TABLE_HEADERS, label="Extractions", wrap=True,
                                         interactive=False, elem_id="reamo-table",
                                         column_widths=["10%", "10%", "24%", "12%", "44%"])
                    image = gr.AnnotatedImage(label="Image groundings (masks and boxes)", visible=False,
                                              height=520, elem_id="reamo-image")
                    # no label badge: it would cover the first span's label drawn at the top-left
                    waveform = gr.Image(label="Audio: entity time spans", show_label=False, type="pil",
                                        visible=False, interactive=False, elem_id="reamo-waveform")
                    clip_choice = gr.Dropdown(label="Play an entity's clip", visible=False, elem_id="reamo-clips")
                    clip_audio = gr.Audio(label="Entity clip", type="filepath", visible=False, interactive=False)
                    gallery = gr.Gallery(label="Video: tracked frames", visible=False, columns=3, height="auto",
                                         elem_id="reamo-video")
                    with gr.Accordion("Tool calls and details", open=False):
                        tool_json = gr.JSON(label="tool calls, results, problems, raw model output")
                    result_file = gr.File(label="Result (JSON)", interactive=False, elem_id="reamo-result")

            outputs = [chatbot, box, spans, table, image, waveform, clip_choice, clip_audio, gallery, tool_json,
                       result_file]
            chat_inputs = [box, chatbot, tasks, labels]
            box.submit(respond, chat_inputs, outputs, api_visibility="undocumented", api_name="chat",
                       concurrency_limit=concurrency_limit, concurrency_id="extract", show_progress="minimal")
            if examples:
                example_block.load_input_event.then(
                    respond, chat_inputs, outputs, api_visibility="private",
                    concurrency_limit=concurrency_limit, concurrency_id="extract", show_progress="minimal",
                )
            clip_choice.change(lambda path: path, clip_choice, clip_audio, api_visibility="private", queue=False)

        with gr.Tab("Single request (API)"):
            gr.Markdown(
                "The same extraction as one call; `gradio_client`: "
                "`Client(url).predict(text, handle_file(path) or None, ['ner','re'], '', api_name='/extract')` "
                "returns the Result as JSON."
            )
            api_text = gr.Textbox(label="Text", lines=3)
            api_file = gr.File(label="Image, audio or video (optional)", type="filepath",
                               file_types=["image", "audio", "video"])
            api_tasks = gr.CheckboxGroup(TASK_CHOICES, value=["ner", "re", "ee"], label="Tasks")
            api_labels = gr.Textbox(label="Entity types (optional, comma separated)")
            run = gr.Button("Extract", variant="primary")
            api_out = gr.JSON(label="Result")
            run.click(api_extract, [api_text, api_file, api_tasks, api_labels], api_out, api_name="extract",
                      concurrency_limit=concurrency_limit, concurrency_id="extract")
        with gr.Tab("Knowledge graph"):
            gr.Markdown("The neighbourhood of an entity in a graph built with `reamo kg build` "
                        "(documents, relations, events, and image crops of its grounded mentions).")
            if kg_db is None:
                gr.Markdown(f"*{NO_GRAPH}.*")
            with gr.Row():
                kg_entity = gr.Textbox(label="Entity", placeholder="Rafael Nadal")
                kg_depth = gr.Slider(1, 2, value=1, step=1, label="Depth")
            kg_button = gr.Button("Show neighbourhood", variant="primary", interactive=kg_db is not None)
            kg_picture = gr.Image(label="Neighbourhood", type="pil", interactive=False)

            def graph_picture(entity: str, depth: float) -> Any:
                """The server's own graph folder, never one named by the request."""
                return show_neighbourhood(kg_db, entity, depth)

            kg_button.click(graph_picture, [kg_entity, kg_depth], kg_picture, api_name="kg_neighbourhood")
    app.queue(max_size=64, default_concurrency_limit=concurrency_limit)
    app.reamo_examples = examples  # type: ignore[attr-defined] - for callers and tests
    app.reamo_holder = holder  # type: ignore[attr-defined]
    return app


NO_GRAPH = "no knowledge graph is configured for this server; start it with reamo ui --kg-db FOLDER"


def _check_kg_db(kg_db: str | Path | None) -> Path | None:
    """The operator's graph folder, checked at start-up (where naming the path is fine), so requests need not."""
    if kg_db is None:
        return None
    from reamo.kg.store import db_file

    folder = Path(kg_db).expanduser().resolve()
    if not db_file(folder).is_file():
        raise ConfigError(f"--kg-db {kg_db}: no knowledge graph there ({db_file(folder).name} missing); build one "
                          f"with `reamo kg build predictions.jsonl --db {kg_db}`")
    return folder


def show_neighbourhood(db_dir: str | Path | None, entity: str, depth: float = 1) -> Any:
    """The knowledge-graph tab: a drawing of the entity's neighbourhood in the server's graph `db_dir`, or an error
    that names no server path and does not tell whether a folder exists (it is shown to any client)."""
    from reamo.kg.draw import draw_neighbourhood

    if db_dir is None:
        raise gr.Error(NO_GRAPH)
    if not entity.strip():
        raise gr.Error("type an entity name")
    try:
        return draw_neighbourhood(Path(db_dir), entity.strip(), depth=min(max(int(depth), 1), 2))
    except ReamoError as err:
        logger.warning("knowledge graph tab: %s", err)  # the details (paths) stay in the server log
        raise gr.Error("the knowledge graph of this server cannot be read; its operator can see why in the "
                       "server log") from err


def allowed_paths(examples: list[UIExample]) -> list[str]:
    """Folders the server may send files from: the example inputs' folders (shared data, temp dir)."""
    folders = {str(Path(e.file).parent) for e in examples if e.file}
    media = shared_media_dir()
    if media.is_dir():
        folders.add(str(media))
    return sorted(folders)


def mount(
    fastapi_app: Any,
    agent: Any,
    path: str = "/reamo",
    *,
    max_file_size: str | int = MAX_FILE_SIZE,
    **build_kwargs: Any,
) -> Any:
    """Serve the UI under `path` of an existing FastAPI app; returns that app."""
    blocks = build_app(agent, **build_kwargs)
    return gr.mount_gradio_app(
        fastapi_app, blocks, path=path, max_file_size=max_file_size,
        allowed_paths=allowed_paths(blocks.reamo_examples),  # type: ignore[attr-defined]
        footer_links=["api"],
    )


def launch(
    model: str = "default",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    *,
    max_file_size: str | int = MAX_FILE_SIZE,
    concurrency_limit: int = 2,
    block: bool = True,
    kg_db: str | Path | None = None,
    **agent_settings: Any,
) -> gr.Blocks:
    """Start the UI for `model` ("default" or a folder from `ReamoModel.save_pretrained`) at http://host:port.

    The model loads in the background right away; the first request waits for it. `block=False` returns once
    the server is up (tests, notebooks). `kg_db`: the graph folder of the knowledge-graph tab.
    """
    from reamo.agent import Agent

    app = build_app(lambda: Agent.from_pretrained(model, **agent_settings), concurrency_limit=concurrency_limit,
                    kg_db=kg_db)
    holder: AgentHolder = app.reamo_holder  # type: ignore[attr-defined]
    threading.Thread(target=holder.get, name="reamo-ui-warmup", daemon=True).start()
    app.launch(
        server_name=host, server_port=port, share=share, max_file_size=max_file_size,
        allowed_paths=allowed_paths(app.reamo_examples),  # type: ignore[attr-defined]
        prevent_thread_lock=not block, show_error=True, footer_links=["api"], quiet=not block,
    )
    return app
