"""The Gradio UI, end to end through real servers: a real browser (Debian chromium via Playwright) uploads an image
and reads the highlighted entities and the annotated image; `gradio_client` calls the `extract` endpoint (one
request, 8 concurrent ones, a corrupt upload, the app mounted in FastAPI); one slow test runs the real embedded
default LLM.

The plumbing tests use `ScriptedAgent`: a real `Agent` (real media loaders, OCR/face context, parser, alignment,
dispatcher and grounding tools) whose LLM is replaced by `ScriptedLLM`, which answers in the protocol with the
capitalized phrases of the request text, so what the UI must show is known in advance and fast to produce.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from reamo.agent import Agent, AgentSettings
from reamo.demo import make_banner_photo
from reamo.errors import MediaError
from reamo.model.modeling_reamo import Generation
from reamo.schema import ImageRegion, Result
from reamo.ui import views
from reamo.ui.app import build_app, mount
from reamo.ui.examples import build_examples
from reamo.ui.pipeline import (
    UI_LIMITS,
    Outcome,
    Stage,
    load_upload,
    parse_labels,
    parse_tasks,
    run_request,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NASA_TEXT = "NASA astronaut Eileen Collins poses before the shuttle mission."
FAILURE_WORD = "kaboom"


class ScriptedLLM:
    """Stands in for the LLM only: answers each prompt with its request text's capitalized phrases, in the protocol.

    Two-word phrases are PER, all-caps words ORG, others LOC; the first two phrases get a `peer` relation.
    A text containing FAILURE_WORD raises, like a model that breaks mid-request.
    """

    encoded_modalities: tuple[str, ...] = ()
    encoder = None

    class tokenizer:  # noqa: N801 - stands in for the model's tokenizer attribute (counts words)
        eos_token = ""

        def __new__(cls, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:  # type: ignore[misc]
            return {"input_ids": list(range(len(text.split())))}

    def render_prompt(self, messages: list[dict[str, Any]], tools: Any = None,
                      add_generation_prompt: bool = True) -> str:
        content = messages[-1]["content"]
        return content if isinstance(content, str) else content[-1]["text"]

    def generations(self, prompts: list[str], media: Any = None, max_new_tokens: int = 0, max_time: Any = None,
                    prefixes: Any = None, draft_tokens: int = 0) -> list[Generation]:
        if any(FAILURE_WORD in prompt for prompt in prompts):
            raise RuntimeError("CUDA error: device-side assert triggered (simulated)")
        return [Generation(text=self.answer(prompt.rsplit("Text: ", 1)[-1])) for prompt in prompts]

    def generate(self, prompts: list[str], media: Any = None, max_new_tokens: int = 0, max_time: Any = None,
                 prefixes: Any = None) -> list[str]:
        return [g.text for g in self.generations(prompts, media, max_new_tokens, max_time, prefixes)]

    @staticmethod
    def answer(text: str) -> str:
        phrases = list(dict.fromkeys(re.findall(r"[A-Z][A-Za-z0-9]+(?: [A-Z][a-z0-9]+)*", text)))
        typed = [(p, "PER" if len(p.split()) == 2 else "ORG" if p.isupper() else "LOC") for p in phrases]
        lines = ["Entities: " + ("".join(f"({p}, {t})" for p, t in typed) or "None")]
        lines.append(f"Relations: ({phrases[0]}, peer, {phrases[1]})" if len(phrases) > 1 else "Relations: None")
        lines.append("Events: None")
        return "\n".join(lines)


class ScriptedAgent(Agent):
    """A real Agent around ScriptedLLM (UI plumbing tests only)."""

    def __init__(self) -> None:
        super().__init__(ScriptedLLM(), settings=AgentSettings(few_shot=False))  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_banner_photo(tmp_path_factory.mktemp("ui-media") / "astronaut.png", "NASA")


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ui-bad") / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG " * 20)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The UI around a ScriptedAgent, served on a free local port; yields its URL."""
    examples = build_examples(tmp_path_factory.mktemp("ui-examples"))
    app = build_app(ScriptedAgent(), examples=examples, concurrency_limit=2)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               max_file_size="5mb", allowed_paths=sorted({str(Path(e.file).parent) for e in examples if e.file}))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


# -- pure views and the staged pipeline --------------------------------------------------------------------------


def test_pipeline_streams_stages_then_a_grounded_result(photo: Path) -> None:
    items = list(run_request(ScriptedAgent(), NASA_TEXT, [str(photo)], ["ner", "re"]))
    stages = [i.message for i in items if isinstance(i, Stage)]
    assert stages[0] == "loading the upload..." and any("extracting" in s for s in stages)
    outcome = items[-1]
    assert isinstance(outcome, Outcome)
    result = outcome.result
    assert [e.text for e in result.entities] == ["NASA", "Eileen Collins"]
    nasa = result.entities[0]
    region = nasa.grounding("image")
    assert isinstance(region, ImageRegion) and region.box.y1 >= 400  # the banner is printed at y 420..490
    assert views.highlighted(result)[:2] == [("NASA", "ORG"), (" astronaut ", None)]
    rows = views.table_rows(result)
    assert rows[0][:4] == ["entity", "ORG", "NASA", "0-4"] and rows[0][4].startswith("image box")
    assert ["relation", "peer", "NASA -> Eileen Collins", "", ""] in rows
    pairs = views.image_annotations(outcome.media.image, result)
    assert any(label == "NASA (ORG)" for _, label in pairs)


def test_unknown_format_names_the_file_and_the_accepted_formats(tmp_path: Path) -> None:
    unknown = tmp_path / "upload"  # no extension: every loader is tried
    unknown.write_bytes(b"\x00\x01 plain bytes, no media format " * 10)
    with pytest.raises(MediaError, match=r"^upload: not a supported image, audio or video file") as caught:
        load_upload(unknown, UI_LIMITS)
    assert str(tmp_path) not in str(caught.value)


def test_task_and_label_parsing() -> None:
    assert parse_tasks(["EE", "ner"]) == ("ner", "ee")
    assert parse_tasks("re") == ("re",)
    with pytest.raises(Exception, match="at least one task"):
        parse_tasks([])
    assert parse_labels(" PER, ORG ,\nLOC ") == ["PER", "ORG", "LOC"]
    assert parse_labels("  ") is None


# -- gradio_client against the API endpoint ---------------------------------------------------------------------


def test_api_extract_returns_result_json(server: str, photo: Path) -> None:
    client = gradio_client.Client(server, verbose=False)
    data = client.predict(NASA_TEXT, gradio_client.handle_file(str(photo)), ["ner"], "", api_name="/extract")
    result = Result.model_validate(data)
    assert result.text == NASA_TEXT and result.tasks == ["ner"] and result.relations == []
    assert result.media["image"].endswith(".png")
    assert isinstance(result.entities[0].grounding("image"), ImageRegion)


def test_eight_concurrent_requests_keep_their_own_results(server: str) -> None:
    names = ["Alice Moreau", "Bruno Keller", "Chiara Conti", "Dmitri Orlov",
             "Elena Vidal", "Farid Haddad", "Greta Lind", "Hiro Tanaka"]
    texts = [f"{name} visited Lisbon on day {i}." for i, name in enumerate(names)]

    def ask(text: str) -> Result:
        client = gradio_client.Client(server, verbose=False)
        return Result.model_validate(client.predict(text, None, ["ner", "re"], "", api_name="/extract"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, texts))
    for name, text, result in zip(names, texts, results):
        assert result.text == text
        assert [e.text for e in result.entities] == [name, "Lisbon"]
        assert result.entities[0].span is not None and text[result.entities[0].span.start:].startswith(name)


def test_api_bad_upload_is_an_error_and_the_server_keeps_answering(server: str, corrupt: Path, tmp_path: Path) -> None:
    client = gradio_client.Client(server, verbose=False)
    with pytest.raises(Exception, match="broken.jpg: cannot read the image") as caught:
        client.predict("Anna Berg smiles.", gradio_client.handle_file(str(corrupt)), ["ner"], "", api_name="/extract")
    assert "/tmp" not in str(caught.value)  # the server's temp path is not shown
    unknown = tmp_path / "notes.bin"
    unknown.write_bytes(b"\x00\x01 plain bytes, no media format " * 10)
    with pytest.raises(Exception, match="Invalid file type"):  # Gradio's own file_types check
        client.predict("Anna Berg smiles.", gradio_client.handle_file(str(unknown)), ["ner"], "", api_name="/extract")
    data = client.predict("Anna Berg smiles in Oslo.", None, ["ner"], "", api_name="/extract")
    assert [e["text"] for e in data["entities"]] == ["Anna Berg", "Oslo"]


def _graph(folder: Path) -> Path:
    from reamo.kg import build_graph
    from reamo.schema import Entity, TextSpan

    nadal = Entity(text="Rafael Nadal", type="PER", span=TextSpan(start=0, end=12))
    build_graph([("doc1", Result(text="Rafael Nadal wins", entities=[nadal]))], folder, progress=False)
    return folder


def test_graph_tab_opens_only_the_server_graph(server: str, tmp_path: Path) -> None:
    """The client names an entity and a depth, never a folder; errors it sees name no server path."""
    from reamo.errors import ConfigError

    client = gradio_client.Client(server, verbose=False)  # a server started without --kg-db
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/kg_neighbourhood"]
    assert [p["parameter_name"] for p in api["parameters"]] == ["entity", "depth"]
    with pytest.raises(Exception, match="no knowledge graph is configured for this server; start it with "
                                        "reamo ui --kg-db FOLDER") as caught:
        client.predict("Rafael Nadal", 1, api_name="/kg_neighbourhood")
    assert "/tmp" not in str(caught.value)

    other = _graph(tmp_path / "other")  # a graph the server was not started with
    with pytest.raises(ConfigError, match="--kg-db .*missing: no knowledge graph there"):
        build_app(ScriptedAgent(), examples=[], kg_db=tmp_path / "missing")  # the operator hears at start-up
    app = build_app(ScriptedAgent(), examples=[], kg_db=_graph(tmp_path / "served"))
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        picture = client.predict("Rafael Nadal", 2, api_name="/kg_neighbourhood")
        assert Path(picture).stat().st_size > 1000
        with pytest.raises(Exception):  # a folder in the request is no parameter: the call fails, nothing opened
            client.predict(str(other), "Rafael Nadal", 1, api_name="/kg_neighbourhood")
    finally:
        app.close()


def test_chat_shows_model_failure_and_oversized_upload_as_messages(server: str, tmp_path: Path) -> None:
    client = gradio_client.Client(server, verbose=False)

    details: list[Any] = []

    def chat(text: str) -> list[dict[str, Any]]:
        outputs = client.predict({"text": text, "files": []}, [], ["ner"], "", api_name="/chat")
        details.append(outputs[9])  # the "Tool calls and details" JSON
        return outputs[0]

    history = chat(f"Anna Berg said {FAILURE_WORD}.")
    assert [m["role"] for m in history] == ["user", "assistant", "assistant"]
    failure = json.dumps(history[-1]["content"])
    assert "The model failed on this request" in failure and "RuntimeError" in failure
    assert "Found 2 entities" in json.dumps(chat("Anna Berg smiles in Oslo.")[-1]["content"])
    assert details[-1]["raw_output"].startswith("Entities: (Anna Berg, PER)(Oslo, LOC)")

    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(6_000_000))  # over the fixture's max_file_size of 5 MB
    with pytest.raises(Exception, match=r"(?i)too large|size"):
        client.predict("Anna Berg.", gradio_client.handle_file(str(big)), ["ner"], "", api_name="/extract")
    assert chat("Anna Berg smiles in Oslo.")[-1]["role"] == "assistant"


def test_mounted_in_fastapi(photo: Path) -> None:
    fastapi = pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    import httpx

    api = fastapi.FastAPI()

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    mount(api, ScriptedAgent(), path="/reamo", examples=[])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}
        assert httpx.get(f"{base}/reamo/", follow_redirects=True).status_code == 200
        client = gradio_client.Client(f"{base}/reamo/", verbose=False)
        data = client.predict("Rafael Nadal met Mery Perello.", None, ["ner", "re"], "", api_name="/extract")
        assert [e["text"] for e in data["entities"]] == ["Rafael Nadal", "Mery Perello"]
        assert data["relations"][0]["type"] == "peer"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- a real browser -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _send(page: Any, text: str, file: Path | None) -> None:
    """Type `text`, attach `file` through the multimodal box's file input, press Enter."""
    box = page.locator("#reamo-input")
    if file is not None:
        box.locator("input[type=file]").set_input_files(str(file))
        page.locator("#reamo-input .thumbnail-item, #reamo-input .thumbnail-image").first.wait_for(timeout=20_000)
    box.locator("textarea").fill(text)
    box.locator("textarea").press("Enter")


def test_browser_chat_shows_highlighted_entities_and_annotated_image(
    server: str, browser: Any, photo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    page = browser.new_page(viewport={"width": 1500, "height": 1300})
    page.goto(server)
    page.locator("#reamo-input textarea").wait_for(timeout=30_000)
    _send(page, NASA_TEXT, photo)
    chat = page.locator("#reamo-chat")
    chat.get_by_text("Found 2 entities").wait_for(timeout=60_000)
    spans = page.locator("#reamo-spans")
    spans.get_by_text("Eileen Collins").first.wait_for(timeout=10_000)
    assert "ORG" in spans.inner_text() and "PER" in spans.inner_text()
    image = page.locator("#reamo-image")
    image.locator("img").first.wait_for(timeout=10_000)
    assert "NASA (ORG)" in image.inner_text()  # the legend of the annotated image
    assert "NASA" in page.locator("#reamo-table").inner_text()
    page.locator("#reamo-result").get_by_text(".json").first.wait_for(timeout=10_000)
    shot = tmp_path_factory.mktemp("ui-screens") / "chat_image.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    page.close()


def test_browser_corrupt_upload_shows_a_message_and_the_next_request_works(
    server: str, browser: Any, corrupt: Path
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(server)
    page.locator("#reamo-input textarea").wait_for(timeout=30_000)
    _send(page, "Anna Berg smiles.", corrupt)
    chat = page.locator("#reamo-chat")
    chat.get_by_text("Could not use the upload").wait_for(timeout=30_000)
    assert "broken.jpg" in chat.inner_text()
    _send(page, "Anna Berg smiles in Oslo.", None)
    chat.get_by_text("Found 2 entities").wait_for(timeout=30_000)
    assert "Oslo" in page.locator("#reamo-spans").inner_text()
    page.close()


# -- the real embedded default LLM ------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_end_to_end_through_the_api(photo: Path) -> None:
    """The real embedded default (SmolLM2 + OCR/face context + grounding tools) behind the UI's API endpoint."""
    agent = Agent.from_pretrained("default", max_new_tokens=48)
    app = build_app(agent, examples=[])
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        data = client.predict(NASA_TEXT, gradio_client.handle_file(str(photo)), ["ner"], "", api_name="/extract")
    finally:
        app.close()
    result = Result.model_validate(data)
    assert result.text == NASA_TEXT and result.raw_output.strip()
    assert "NASA" in result.context  # the OCR read the banner and the LLM got it as context
    assert result.timings["generate"] > 0
    for entity in result.entities:  # whatever the small model found lies in the text and was grounded
        assert entity.span is not None and NASA_TEXT[entity.span.start:entity.span.end] == entity.text
        assert entity.grounding("image") is not None


def test_audio_clips_video_frames_and_duration_limits(tmp_path: Path) -> None:
    """Speech (espeak-ng) -> entity clips cut at their time spans; video -> frames with the tracked boxes drawn."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    examples = {e.label: e for e in build_examples(tmp_path)}
    speech = examples["Speech (espeak-ng)"]
    outcome = list(run_request(ScriptedAgent(), speech.text, [speech.file], ["ner"]))[-1]
    clips = dict(views.audio_clips(outcome.media, outcome.result))
    nadal = next(label for label in clips if label.startswith("Rafael Nadal (PER)"))
    rate, samples = clips[nadal]
    assert rate == 16000 and samples.dtype.name == "int16" and 0.3 < len(samples) / rate < 2.0
    assert views.wav_bytes(rate, samples)[:4] == b"RIFF"

    video = examples["Video + Reuters banner"]
    outcome = list(run_request(ScriptedAgent(), video.text, [video.file], ["ner"]))[-1]
    frames = views.video_frames(outcome.media, outcome.result)
    assert frames and all("Reuters" in caption for _, caption in frames)
    assert frames[0][0].size == (outcome.media.video.width, outcome.media.video.height)

    short = UI_LIMITS.model_copy(update={"max_audio_seconds": 1.0, "max_video_seconds": 1.0})
    for example in (speech, video):
        with pytest.raises(MediaError, match=r"(?i)second|long"):
            list(run_request(ScriptedAgent(), example.text, [example.file], ["ner"], limits=short))
