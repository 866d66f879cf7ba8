"""The web UI `hanlin serve` ships at ``/``, driven in a real browser: Debian's Chromium through Playwright.

Each test starts the app on loopback (uvicorn in a thread, as `hanlin serve` runs it) and uses the page the way a
person would, with the keyboard where it matters: a chat on SmolLM2 with the calculator whose streamed steps and
answer match the API's; Stop really cancelling a (slow, scripted) run; a tool result full of HTML shown as text and
running nothing; a trace written by ``save_trace`` and an evaluation folder written by the evaluators' own writer
opened in their pages; a wrong API key getting no data. Screenshots of every page are saved (the folder is printed;
``HANLIN_UI_SCREENSHOTS=DIR`` keeps a copy in DIR).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
CHROMIUM = Path(os.environ.get("HANLIN_CHROMIUM", "/usr/bin/chromium"))
try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("playwright missing: pip install 'hanlin[dev]' (the browser is Debian's chromium, not Playwright's "
                "download)", allow_module_level=True)
if not CHROMIUM.is_file():  # pragma: no cover - depends on the environment
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set $HANLIN_CHROMIUM)", allow_module_level=True)

from hanlin import Agent, ScriptedModel, get_plugin_manager, hookimpl, load_tools, load_traces, tool  # noqa: E402
from hanlin.chat_model import Chunk, GenerationParams  # noqa: E402
from hanlin.messages import Message  # noqa: E402
from hanlin.server import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = '<script>window.__pwned = "script"</script><img src=x onerror="window.__pwned = \'img\'"><b>bold?</b>'


# ---- the server and the browser ------------------------------------------------------------------------------
@contextmanager
def running(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port (port 0: the OS picks), in a daemon thread; its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True, name="web-ui-test-server")
    thread.start()
    give_up = time.monotonic() + 30
    while not (server.started and server.servers):
        assert thread.is_alive() and time.monotonic() < give_up, "the test server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@contextmanager
def browsing(browser: Any, **options: Any) -> Iterator[Page]:
    """A fresh browser context's page; any uncaught error in the page fails the test."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True, **options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    with browsing(browser) as page:
        yield page


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("web-ui-screenshots")
    print(f"\nweb UI screenshots: {folder}")
    return folder


def screenshot(page: Page, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("HANLIN_UI_SCREENSHOTS"):
        keep = Path(os.environ["HANLIN_UI_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, keep / path.name)


def open_page(page: Page, url: str, view: str = "chat") -> None:
    page.goto(f"{url}/#/{view}")
    expect(page.locator(f"body[data-ready='{view}']")).to_be_attached(timeout=15_000)


def send(page: Page, text: str) -> None:
    """Type a message and send it with Enter, as a keyboard user would."""
    box = page.locator("#message")
    box.focus()
    box.fill(text)
    box.press("Enter")


def wait_for_run_end(page: Page, turn: int, timeout: float = 120_000) -> Any:
    article = page.locator("article.turn").nth(turn)
    expect(article).to_have_attribute("data-status", re.compile(r".+"), timeout=timeout)
    return article


# Records, as the DOM changes, each step block, tool call, observation, error and answer the page adds, with
# whether an answer was on the page yet: proof that the steps appear one by one rather than all at the end.
WATCH_STEPS = """
window.__seen = [];
new MutationObserver((records) => {
  for (const r of records) for (const node of r.addedNodes) {
    if (!(node instanceof Element)) continue;
    const kind = ["step", "tool-call", "observation", "run-error", "final-answer"].find((c) => node.classList.contains(c));
    if (!kind) continue;
    const step = Number(node.closest(".step")?.dataset.step ?? node.dataset.step ?? -1);
    window.__seen.push({kind, step, answered: !!document.querySelector(".final-answer, .run-footer .download"),
                        text: kind === "step" ? "" : node.querySelector("pre")?.textContent ?? ""});
  }
}).observe(document, {childList: true, subtree: true});
"""


# ---- SmolLM2: the page's run against the API's --------------------------------------------------------------
def test_chat_on_smollm2_streams_steps_in_order_and_matches_the_api(smollm2, page: Page, shots: Path) -> None:
    """Greedy SmolLM2-135M with the calculator, the same request through the page and through the API (the agent
    served as a model): the page's steps stream in the order of the run's events, and end as the API's reply does."""
    agent = Agent(smollm2, load_tools(["calculator"]), protocol="react", max_steps=3, params={"temperature": 0})
    app = create_app(smollm2, model_name="smollm2-135m-instruct", agent=agent, agent_name="calc-agent")
    tasks = ["What is 17 * 3?", "Use the calculator to compute 2 + 2."]
    with running(app) as url:
        api = []
        for task in tasks:
            reply = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
                "model": "calc-agent", "temperature": 0, "messages": [{"role": "user", "content": task}]}).json()
            api.append(reply)
        page.add_init_script(WATCH_STEPS)
        open_page(page, url)
        expect(page.locator("#protocol")).to_have_value("react")
        expect(page.locator("input[name=tool][value=calculator]")).to_be_checked()
        page.locator("#max-steps").fill("3")
        for i, (task, reply) in enumerate(zip(tasks, api)):
            if i:  # each task in its own session, as each API request is
                page.locator("#new-session").click()
                page.evaluate("window.__seen = []")
            send(page, task)
            article = wait_for_run_end(page, 0)
            status = reply["hanlin_status"]
            assert article.get_attribute("data-status") == status
            content = reply["choices"][0]["message"]["content"]
            if status == "answered":
                assert article.locator(".final-answer pre").inner_text() == content
            else:  # the API's content names the ending the page shows as the run's last error
                assert article.locator(".run-error pre").last.inner_text() in content
            # The page's steps are the API's steps, in the same order, and appeared before the run ended.
            seen = page.evaluate("window.__seen")
            shown = [(s["kind"], s["step"], s["text"]) for s in seen if s["kind"] in ("tool-call", "observation")]
            expected = []
            for step in reply["hanlin_steps"]:
                if step["type"] == "tool_call":
                    expected.append(("tool-call", step["step"],
                                     json.dumps(step["call"]["arguments"], indent=2, ensure_ascii=False)))
                elif step["type"] == "tool_result":
                    expected.append(("observation", step["step"], step["content"]))
            assert shown == expected
            steps = [s["step"] for s in seen if s["kind"] == "step"]
            assert steps == sorted(steps) and len(steps) >= 1
            assert not seen[0]["answered"], "the first step was drawn only once the run had ended: not streamed"
            usage = article.locator(".step .usage").first.inner_text()
            assert "prompt" in usage and "reused" in usage and "completion" in usage
            screenshot(page, shots, f"chat-smollm2-{i}")
        assert httpx.get(f"{url}/v1/ui/runs").json()["running"] == []


# ---- scripted models: stop, injection, sessions, traces ----------------------------------------------------------
class SlowModel(ScriptedModel):
    """A ReAct model that thinks aloud forever, one short piece every 50 ms; ``pieces`` counts what it produced."""

    def __init__(self) -> None:
        super().__init__(lambda messages, params: "Thought: " + "still thinking " * 10_000, name="slow", chunk_size=8)
        self.pieces = 0

    def _stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Chunk]:
        for chunk in super()._stream(messages, params):
            self.pieces += 1
            time.sleep(0.05)
            yield chunk


def test_stop_cancels_the_running_agent_on_the_server(page: Page, shots: Path) -> None:
    model = SlowModel()
    app = create_app(model, model_name="slow")
    with running(app) as url:
        open_page(page, url)
        send(page, "Think about it for a long time.")
        expect(page.locator(".model-output")).to_contain_text("still thinking", timeout=15_000)
        running_now = httpx.get(f"{url}/v1/ui/runs").json()["running"]
        assert len(running_now) == 1 and httpx.get(f"{url}/health").json()["in_flight"] == 1
        expect(page.locator("#stop")).to_be_enabled()
        page.keyboard.press("Escape")  # the keyboard's Stop
        article = wait_for_run_end(page, 0, timeout=15_000)
        assert article.get_attribute("data-status") == "cancelled"
        expect(article.locator(".run-status")).to_contain_text("cancelled")
        runs = httpx.get(f"{url}/v1/ui/runs").json()
        assert runs["running"] == [] and runs["recent"][0]["status"] == "cancelled"
        health = httpx.get(f"{url}/health").json()
        assert health["in_flight"] == 0 and health["queue_depth"] == 0
        produced = model.pieces
        time.sleep(0.5)
        assert model.pieces == produced, "the model went on generating after Stop"
        screenshot(page, shots, "chat-stopped")
        # Stop from the button too, and a page that goes away (the stream closes) also ends its run.
        send(page, "Again.")
        expect(page.locator("article.turn").nth(1).locator(".model-output")).to_contain_text("still", timeout=15_000)
        page.locator("#stop").click()
        assert wait_for_run_end(page, 1, timeout=15_000).get_attribute("data-status") == "cancelled"
        send(page, "Once more.")
        expect(page.locator("article.turn").nth(2).locator(".model-output")).to_contain_text("still", timeout=15_000)
        page.goto("about:blank")
        give_up = time.monotonic() + 15
        while httpx.get(f"{url}/v1/ui/runs").json()["running"]:
            assert time.monotonic() < give_up, "a run whose page went away kept running"
            time.sleep(0.05)


class HtmlToolPlugin:
    """A tool that returns what a hostile web page might: markup and script."""

    @hookimpl
    def register_tools(self, register: Any) -> None:
        @tool(name="fetch_page")
        def fetch_page(url: str) -> str:
            """Fetch a web page."""
            return f"{PAYLOAD} from {url}"

        register(fetch_page)


HTML_CALL = ('Thought: I fetch it <i>now</i>\nAction: fetch_page\n'
             'Action Input: {"url": "http://example.test/<svg onload=alert(1)>"}')
HTML_ANSWER = f"Thought: done\nFinal Answer: the page says {PAYLOAD}"


def test_model_output_and_tool_results_are_text_and_sessions_remember(browser: Any, shots: Path, tmp_path: Path) -> None:
    """Markup in the model's output and in a tool's result is shown as text and runs nothing. The page's own
    Content-Security-Policy (no inline script) is switched off here, so what is checked is the rendering alone."""
    model = ScriptedModel([HTML_CALL, HTML_ANSWER] * 2, name="scripted")
    with get_plugin_manager().registered(HtmlToolPlugin(), "web-ui-html-tool"), browsing(browser, bypass_csp=True) as page:
        agent = Agent(model, load_tools(["fetch_page"]), protocol="react")
        app = create_app(model, model_name="scripted", agent=agent)
        with running(app) as url:
            open_page(page, url)
            page.locator("input[name=tool][value=fetch_page]").check()
            send(page, "Fetch http://example.test/ and tell me what it says.")
            first = wait_for_run_end(page, 0, timeout=30_000)
            assert first.get_attribute("data-status") == "answered"
            observation = first.locator(".observation pre")
            assert observation.inner_text() == f"{PAYLOAD} from http://example.test/<svg onload=alert(1)>"
            assert first.locator(".final-answer pre").inner_text() == f"the page says {PAYLOAD}"
            assert "<i>now</i>" in first.locator(".model-output").first.inner_text()
            # Nothing ran and no element came from the text: no img, script, svg, b or i beyond the page's own.
            page.wait_for_timeout(300)  # an onerror would fire on the broken image's load failure by now
            assert page.evaluate("window.__pwned") is None
            assert page.locator("main img, main svg, main b, main i, main script").count() == 0
            assert page.evaluate("document.scripts.length") == 1  # the page's own module

            # A second turn in the same session sees the first (the server keeps the transcript); a look at another
            # page in between keeps the conversation on screen.
            session = page.locator(".session").inner_text()
            page.get_by_role("link", name="Traces").click()
            expect(page.locator("body[data-ready='traces']")).to_be_attached()
            page.get_by_role("link", name="Chat").click()
            expect(page.locator("body[data-ready='chat']")).to_be_attached()
            expect(page.locator("article.turn")).to_have_count(1)
            send(page, "And again?")
            second = wait_for_run_end(page, 1, timeout=30_000)
            assert second.get_attribute("data-status") == "answered"
            assert page.locator(".session").inner_text() == session
            session_id = session.removeprefix("session ")
            kept = httpx.get(f"{url}/v1/ui/sessions/{session_id}").json()["messages"]
            assert [m["content"] for m in kept if m["role"] == "user"][:1] == [
                "Fetch http://example.test/ and tell me what it says."]
            assert sum(m["role"] == "user" and m["content"] == "And again?" for m in kept) == 1
            screenshot(page, shots, "chat-html-as-text")
            page.set_viewport_size({"width": 390, "height": 844})  # a phone: everything wraps, nothing scrolls sideways
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            screenshot(page, shots, "chat-phone")

            # The run downloads as a trace that hanlin reads back.
            with page.expect_download() as download:
                second.locator("button.download").click()
            path = tmp_path / "run.jsonl"
            download.value.save_as(path)
            (trace,) = load_traces(path)
            assert trace.status == "answered" and trace.output == f"the page says {PAYLOAD}"
            assert [m.content for m in trace.messages if m.role == "user"][0].startswith("Fetch http://example.test/")


def test_trace_viewer_opens_a_saved_trace_and_recent_runs(page: Page, shots: Path, tmp_path: Path) -> None:
    script = ['Thought: add\nAction: calculator\nAction Input: {"expression": "2+3"}', "Thought: ok\nFinal Answer: 5",
              "Thought: easy\nFinal Answer: <b>no tools</b>"]
    with Agent(ScriptedModel(script), load_tools(["calculator"]), protocol="react") as agent:
        first, second = agent.run("What is 2+3?"), agent.run("Say hi.")
    path = first.save_trace(tmp_path / "trace.jsonl")
    second.save_trace(path)
    model = ScriptedModel(["Thought: quick\nFinal Answer: served"], name="scripted")
    with running(create_app(model, model_name="scripted")) as url:
        open_page(page, url, "traces")
        page.locator("#trace-file").set_input_files(str(path))
        expect(page.locator("button.record")).to_have_count(2)
        view = page.locator(".record-view")
        expect(view.locator(".trace-status")).to_have_text("answered")
        assert view.locator(".trace-output").inner_text() == "5"
        assert view.locator(".step").count() == first.steps
        call = next(e for e in first.events if e.type == "tool_call")
        assert view.locator(".tool-call code").inner_text() == call.call.name
        assert view.locator(".tool-call pre").inner_text() == json.dumps(call.call.arguments, indent=2)
        result = next(e for e in first.events if e.type == "tool_result")
        assert view.locator(".observation pre").inner_text() == result.content == "5"
        assert "ms" in view.locator(".observation .label").inner_text()  # the tool's timing
        # Step through with the keyboard: the stepper opens one step at a time.
        next_button = page.get_by_role("button", name="Next step ▶")
        next_button.focus()
        page.keyboard.press("Enter")
        expect(view.locator(".step[open]")).to_have_count(1)
        expect(page.get_by_text("step 1 of 2")).to_be_visible()
        view.locator("details.model-view > summary").click()
        model_view = view.locator("details.model-view .messages li")
        assert model_view.count() == len(first.model_view["messages"])
        screenshot(page, shots, "traces-file")
        page.locator("button.record").nth(1).click()
        expect(view.locator(".trace-output")).to_have_text("<b>no tools</b>")
        assert page.locator("main b").count() == 0

        # A run of this server, opened from its recent runs.
        with httpx.stream("POST", f"{url}/v1/ui/runs", json={"message": "hello"}, timeout=30) as stream:
            lines = [line for line in stream.iter_lines() if line]
        assert json.loads(lines[-1].removeprefix("data: "))["status"] == "answered"
        page.get_by_role("button", name="Recent runs on this server").click()
        page.locator(".run-list button").first.click()
        expect(view.locator(".trace-output")).to_have_text("served")
        screenshot(page, shots, "traces-recent")


# ---- evaluation results ----------------------------------------------------------------------------------
def _write_result_folder(out: Path, correct: list[bool], model: str = "tiny-model") -> None:
    """A `hanlin eval --out` folder written by the evaluators' own writer (report.write_outputs)."""
    report = pytest.importorskip("hanlin.plugins.evaluators.report")
    from hanlin.plugins.evaluators.metrics import mean_with_stderr

    prediction = sys.modules[report.DatasetResult.__module__].Prediction  # beside DatasetResult, wherever that lives
    predictions = [prediction(id=f"q{i}", sample=0, group="algebra" if i % 2 else "geometry", gold=str(i),
                              output=f"The answer is {i if ok else -i} <script>x</script>", extracted=str(i if ok else -i),
                              correct=ok) for i, ok in enumerate(correct)]
    values = [float(p.correct) for p in predictions]
    groups = {g: mean_with_stderr([float(p.correct) for p in predictions if p.group == g]) for g in ("algebra", "geometry")}
    result = report.DatasetResult(dataset="arith", kind="generation", model=model,
                                  metrics={"accuracy": mean_with_stderr(values)}, groups=groups, predictions=predictions,
                                  prompts=[{"id": p.id} for p in predictions], shots=0, model_calls=len(predictions),
                                  cached=0, elapsed_s=1.5, info={"show_groups": True})
    report.write_outputs(out, [result], report.EvalSettings(limit=len(correct)), model=model, runtime="cpu")


def test_eval_page_shows_the_numbers_of_scores_json(page: Page, shots: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    _write_result_folder(root / "run-a", [True, False, True, True, False, True, False, True])
    _write_result_folder(root / "run-b", [True, True, True, True, False, True, True, True])
    _write_result_folder(root / "run-b", [False, True, False, True, False, True, False, True], model="other-model")
    from hanlin.plugins.evaluators.report import write_chart

    chart, _ = write_chart(root / "run-b")  # None without matplotlib: then the page must say there is no chart
    scores = json.loads((root / "run-a" / "scores.json").read_text())
    model = ScriptedModel([], name="scripted")
    with running(create_app(model, model_name="scripted", eval_folders=[root])) as url:
        open_page(page, url, "evals")
        expect(page.locator("#eval-folder option")).to_have_count(2)
        page.locator("#eval-folder").select_option("0/run-a")
        table = page.locator(".score-table tbody")
        expect(table.locator("tr")).to_have_count(3)
        record = scores["models"]["tiny-model"]["datasets"]["arith"]
        expected = [("accuracy", "", record["metrics"]["accuracy"])] + [
            (record["group_metric"], g, s) for g, s in record["groups"].items()]
        for row, (metric, group, s) in zip(table.locator("tr").all(), expected):
            assert row.get_attribute("data-metric") == metric and row.get_attribute("data-group") == group
            score, stderr = row.locator("td.score"), row.locator("td.stderr")
            assert float(score.get_attribute("data-value")) == s["value"]
            assert score.inner_text().strip() == f"{s['value']:.4f}"
            assert stderr.inner_text() == (f"{s['stderr']:.4f}" if s["stderr"] is not None else "–")
            if s["stderr"] is not None:
                assert math.isclose(float(stderr.get_attribute("data-value")), s["stderr"])
            assert row.locator("td.n").inner_text() == str(s["n"])
        # Per-item predictions: all, then the wrong ones only, then one group's.
        expect(page.locator(".pred-table tbody tr")).to_have_count(8)
        page.locator("#wrong-only").check()
        expect(page.locator(".pred-table tbody tr")).to_have_count(3)
        assert set(page.locator(".pred-table .verdict").all_inner_texts()) == {"wrong"}
        page.locator("#pred-group").select_option("geometry")
        expect(page.locator(".pred-table tbody tr")).to_have_count(2)
        page.locator("#pred-group").select_option("algebra")
        expect(page.locator(".pred-table tbody tr")).to_have_count(1)
        assert page.locator("main script").count() == 0
        screenshot(page, shots, "evals")
        # Comparison with the second folder: B's score and B - A for each row.
        page.locator("#eval-compare").select_option("0/run-b")
        b = json.loads((root / "run-b" / "scores.json").read_text())["models"]["tiny-model"]["datasets"]["arith"]
        first = page.locator(".score-table tbody tr").first
        expect(first.locator("td.score-b")).to_have_text(f"{b['metrics']['accuracy']['value']:.4f}")
        delta = b["metrics"]["accuracy"]["value"] - record["metrics"]["accuracy"]["value"]
        assert first.locator("td.delta").inner_text() == f"+{delta:.4f}"
        # Folder B holds two models: both in its table, and `hanlin eval`'s chart of them.
        page.locator("#eval-compare").select_option("")
        page.locator("#eval-folder").select_option("0/run-b")
        expect(page.locator(".score-table tbody tr")).to_have_count(6)
        if chart is not None:
            expect(page.locator("img.chart")).to_be_visible()
            assert page.evaluate("document.querySelector('img.chart').naturalWidth") > 0
        else:
            expect(page.get_by_text("No chart in this folder")).to_be_visible()
        screenshot(page, shots, "evals-two-models")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: the page reflows, the table scrolls in place
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, shots, "evals-phone")

        # Only the folders given are served: no id reaches elsewhere, nor does a predictions path in scores.json.
        assert httpx.get(f"{url}/v1/ui/evals/..%2F..%2Fetc/scores").status_code == 404
        assert httpx.get(f"{url}/v1/ui/evals/9/scores").status_code == 404
        evil = json.loads((root / "run-b" / "scores.json").read_text())
        evil["models"]["tiny-model"]["datasets"]["arith"]["predictions"] = "../../../../etc/passwd"
        (root / "run-b" / "scores.json").write_text(json.dumps(evil))
        refused = httpx.get(f"{url}/v1/ui/evals/0/run-b/predictions", params={"model": "tiny-model", "dataset": "arith"})
        assert refused.status_code == 403


# ---- the API key ---------------------------------------------------------------------------------------------
def test_a_wrong_api_key_gets_no_data(page: Page, shots: Path) -> None:
    model = ScriptedModel(["Thought: t\nFinal Answer: secret answer"], name="model-behind-a-key")
    with running(create_app(model, model_name="model-behind-a-key", api_key="right-key")) as url:
        routes = ["/v1/ui/config", "/v1/ui/runs", "/v1/ui/evals", "/v1/ui/sessions/s-1", "/v1/ui/runs/run-1/trace"]
        for key in (None, "wrong-key"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for route in routes:
                assert httpx.get(f"{url}{route}", headers=headers).status_code == 401, route
            started = httpx.post(f"{url}/v1/ui/runs", json={"message": "hi"}, headers=headers)
            assert started.status_code == 401 and "secret" not in started.text
        assert httpx.get(f"{url}/").status_code == 200  # the page itself holds no data

        page.goto(url)
        expect(page.locator("main .note.error")).to_contain_text("No data")
        page.locator("#api-key").fill("wrong-key")
        page.locator("#api-key").press("Enter")
        expect(page.locator("#banner")).to_contain_text("wrong API key")
        expect(page.locator("main .note.error")).to_contain_text("No data")
        for view in ("traces", "evals"):
            page.goto(f"{url}/#/{view}")
            expect(page.locator("main .note.error")).to_contain_text("No data")
        assert "model-behind-a-key" not in page.content()
        assert page.locator("#message").count() == 0
        screenshot(page, shots, "wrong-key")

        page.locator("#api-key").fill("right-key")
        page.locator("#api-key").press("Enter")
        expect(page.locator("body[data-ready='evals']")).to_be_attached()
        page.goto(f"{url}/#/chat")
        expect(page.locator("body[data-ready='chat']")).to_be_attached()
        expect(page.locator(".hint")).to_contain_text("model-behind-a-key")
        send(page, "hi")
        article = wait_for_run_end(page, 0, timeout=15_000)
        assert article.get_attribute("data-status") == "answered"
        assert article.locator(".final-answer pre").inner_text() == "secret answer"


def test_run_requests_are_checked_before_anything_runs() -> None:
    """The page's API refuses what it cannot honour, in OpenAI's error shape, and starts no run for it."""
    model = SlowModel()
    with running(create_app(model, model_name="slow")) as url:
        def start(body: dict[str, Any]) -> httpx.Response:
            return httpx.post(f"{url}/v1/ui/runs", json=body, timeout=30)

        for body, status, fragment in [
            ({"message": "hi", "protocol": "nonesuch"}, 400, "unknown protocol 'nonesuch'"),
            ({"message": "hi", "tools": ["python"]}, 400, "tools not offered by this server: python"),
            ({"message": "hi", "session_id": "s-unknown"}, 404, "no session 's-unknown'"),
            ({"message": ""}, 400, "message"),
            ({"message": "hi", "max_steps": 0}, 400, "max_steps"),
            ({"message": "hi", "surprise": 1}, 400, "surprise"),
        ]:
            reply = start(body)
            assert reply.status_code == status and fragment in reply.json()["error"]["message"], (body, reply.text)
        assert httpx.get(f"{url}/v1/ui/runs").json() == {"running": [], "recent": []} and model.pieces == 0
        # One turn at a time per session: a second message while the first runs is refused, and stopping frees it.
        with httpx.stream("POST", f"{url}/v1/ui/runs", json={"message": "think"}, timeout=30) as stream:
            lines = stream.iter_lines()
            first = json.loads(next(line for line in lines if line).removeprefix("data: "))
            busy = start({"message": "again", "session_id": first["session_id"]})
            assert busy.status_code == 409 and "running a turn already" in busy.json()["error"]["message"]
            stopped = httpx.delete(f"{url}/v1/ui/runs/{first['run_id']}", timeout=30).json()
            assert stopped["status"] == "cancelled"
        assert httpx.get(f"{url}/v1/ui/runs").json()["running"] == []
        assert httpx.get(f"{url}/v1/ui/runs/{first['run_id']}/trace").status_code == 404  # a cancelled run has none
        assert "/v1/ui/runs" not in httpx.get(f"{url}/openapi.json").json()["paths"]  # the page's API, not OpenAI's


# ---- packaging -----------------------------------------------------------------------------------------------
def test_the_page_ships_in_the_wheel_and_fetches_nothing_from_elsewhere() -> None:
    """Every UI file is package data of hanlin.server.ui_static, and no file names a URL outside the server."""
    static = ROOT / "sdk" / "server" / "ui_static"
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "hanlin.server.ui_static" in setuptools["packages"]
    patterns = setuptools["package-data"]["hanlin.server.ui_static"]
    for path in static.iterdir():
        if path.suffix == ".py" or path.name == "__pycache__":
            continue
        assert any(path.match(p) for p in patterns), f"{path.name} is not package data: add it to pyproject.toml"
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, path.name
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text, path.name
