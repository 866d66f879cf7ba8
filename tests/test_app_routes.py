"""Apps inside `hanlin serve`: the register_routes hook, the research stream (``POST /v1/research``) and the assistant's
routes (``--app assistant.kb=DIR``), on a real loopback server with scripted models (the loop's logic is what is
examined here; the models' own runs are in test_research_e2e / test_assistant_e2e)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from hanlin import ConfigurationError, ScriptedModel, get_plugin_manager, hookimpl
from hanlin.plugins.apps.research.events import load_trace
from hanlin.plugins.apps.research.pipeline import replay
from hanlin.plugins.tools.kb_index import KnowledgeIndex
from hanlin.server import create_app
from tests.loopback_server import serving
from tests.test_research import PLANNER_MARK, call, scripted

DOCS = {"alpha.md": "# alpha\n\nalpha is written by Ada.\n", "ada.md": "# Ada\n\nAda was born in London.\n",
        "beta.md": "# beta\n\nbeta is written by Bob.\n"}


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("research-docs")
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    return folder


def two_hop(delay: float = 0.0) -> ScriptedModel:
    """tests.test_research's scripted planner on a two-hop plan; each searcher reply takes ``delay`` seconds (time for
    a page to show a node running)."""
    inner = scripted([
        call("add_node", id="author", question="who wrote alpha"),
        call("add_node", id="born", question="Ada born London", depends_on=["author"]),
        call("wait"),
        call("finish", answer="Ada wrote alpha [1] and was born in London [2]."),
    ], answers={"who wrote alpha": "Ada wrote alpha [1].", "Ada born London": "Ada was born in London [1]."})

    def reply(messages: Any, params: Any) -> Any:
        if delay and PLANNER_MARK not in messages[0].content:
            time.sleep(delay)
        return inner._fn(messages, params)

    return ScriptedModel(reply)


def sse_events(response: httpx.Response) -> list[Any]:
    out: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_research_streams_its_graph_and_keeps_a_replayable_trace(docs: Path) -> None:
    app = create_app(two_hop(), model_name="scripted", api_key="k3y",
                     app_options={"research.search": f"local:{docs}"})
    auth = {"Authorization": "Bearer k3y"}
    with serving(app) as url:
        assert httpx.post(f"{url}/v1/research", json={"question": "x"}).status_code == 401
        with httpx.stream("POST", f"{url}/v1/research", headers=auth, timeout=60,
                          json={"question": "Where was the author of alpha born?", "protocol": "tools"}) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
        assert events[0]["type"] == "run" and events[-1] == "[DONE]"
        kinds = [e["type"] for e in events[1:-1]]
        assert kinds[0] == "research_started" and kinds[-1] == "final"
        assert [e["node_id"] for e in events if isinstance(e, dict) and e["type"] == "node_added"] == ["author", "born"]
        assert kinds.index("node_answered") < kinds.index("final")
        final = events[-2]
        assert final["status"] == "answered"
        # each claim cites the passage its node's search returned first (BM25 over the files above)
        assert final["answer"] == "Ada wrote alpha [1] and was born in London [2]."
        assert [r["number"] for r in final["references"]] == [1, 2]
        assert "alpha is written by Ada." in final["references"][0]["passage"]
        assert all(r["url"].endswith(tuple(DOCS)) for r in final["references"])
        # the finished run's trace replays into the same answer
        trace = httpx.get(f"{url}/v1/research/runs/{events[0]['run_id']}/trace", headers=auth)
        assert trace.status_code == 200
        path = docs.parent / "trace.jsonl"
        path.write_text(trace.text)
        replayed = replay(load_trace(path))
        assert replayed.answer == final["answer"] and replayed.status == "answered"
        assert httpx.get(f"{url}/v1/research/runs/research-nope/trace", headers=auth).status_code == 404
        # the UI lists the app's tab and serves its module with the page's security headers
        config = httpx.get(f"{url}/v1/ui/config", headers=auth).json()
        assert {"name": "research", "title": "Research", "module": "/ui/apps/research/page.js"} in config["pages"]
        module = httpx.get(f"{url}/ui/apps/research/page.js")
        assert module.status_code == 200 and "export function page" in module.text
        assert "script-src 'self'" in module.headers["content-security-policy"]
        assert httpx.get(f"{url}/ui/apps/research/../app.py").status_code == 404


def test_research_whole_result_without_stream(docs: Path) -> None:
    app = create_app(two_hop(), model_name="scripted", app_options={"research.search": f"local:{docs}"})
    with serving(app) as url:
        got = httpx.post(f"{url}/v1/research", timeout=60, json={"question": "Where was the author of alpha born?",
                                                                  "protocol": "tools", "stream": False})
        body = got.json()
        assert got.status_code == 200, body
        assert body["status"] == "answered" and body["answer"].startswith("Ada wrote alpha [1]")
        assert body["events"][0]["type"] == "research_started" and body["events"][-1]["type"] == "final"
        # the plan starts from one split of the question unless the request turns it off (this script splits nothing)
        notes = [e["text"] for e in body["events"] if e["type"] == "planner_note"]
        assert "the question was not split; the planner plans from scratch" in notes
        unsplit = httpx.post(f"{url}/v1/research", timeout=60, json={
            "question": "Where was the author of alpha born?", "protocol": "tools", "stream": False, "decompose": False})
        assert not any("split" in e.get("text", "") for e in unsplit.json()["events"])


@pytest.mark.parametrize(("body", "what"), [
    ({"question": "q", "protocol": "nope"}, "unknown protocol 'nope'"),
    ({"question": "q", "max_nodes": 99}, "max_nodes"),
    ({"question": "q", "search": "local:/etc"}, "search"),
    ({"question": ""}, "question"),
])
def test_research_bad_requests_are_400_and_say_what(docs: Path, body: dict, what: str) -> None:
    app = create_app(ScriptedModel([]), model_name="scripted", app_options={"research.search": f"local:{docs}"})
    with serving(app) as url:
        got = httpx.post(f"{url}/v1/research", json=body)
        assert got.status_code == 400
        assert what in got.json()["error"]["message"]


def test_a_client_leaving_cancels_the_run_and_frees_its_slot(docs: Path) -> None:
    """The planner here never finishes (each reply waits); closing the stream must stop it and give the slot back."""
    release = threading.Event()
    calls = {"n": 0}

    def slow(messages, params):
        calls["n"] += 1
        release.wait(0.3)
        return call("add_node", id=f"n{calls['n']}", question=f"what is item {calls['n']}")

    app = create_app(ScriptedModel(slow), model_name="scripted", max_queue=1,
                     app_options={"research.search": f"local:{docs}"})
    with serving(app) as url:
        with httpx.stream("POST", f"{url}/v1/research", json={"question": "a long one", "protocol": "tools"},
                          timeout=30) as response:  # leaving this block closes the connection
            lines = response.iter_lines()  # held: a for loop's break would drop (and so close) the stream
            while '"research_started"' not in next(lines):
                pass
            busy = httpx.post(f"{url}/v1/research", json={"question": "another"})
            assert busy.status_code == 429  # the one slot is held by the running research
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            health = httpx.get(f"{url}/health").json()
            if health["queue_depth"] == 0 and health["in_flight"] == 0:
                break
            time.sleep(0.1)
        assert health["queue_depth"] == 0 and health["in_flight"] == 0, health
        seen = calls["n"]
        time.sleep(1.0)
        assert calls["n"] <= seen + 1  # the planner stopped being called


def test_app_option_nobody_reads_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="researh, which no app reads"):
        create_app(ScriptedModel([]), app_options={"researh.search": "packages"})


@pytest.fixture(scope="module")
def kb_folder(tmp_path_factory) -> Path:
    from tests.test_assistant import DOCS as KB_DOCS

    docs = tmp_path_factory.mktemp("kb-docs")
    for name, text in KB_DOCS.items():
        (docs / name).write_text(text)
    out = tmp_path_factory.mktemp("kb-index")
    KnowledgeIndex.build(docs, backend="bm25").save(out)
    return out


@pytest.mark.parametrize(("options", "what"), [
    ({"assistant.kb": "/no/such/folder"}, "is not a folder"),
    ({"assistant.kbb": "x"}, "unknown assistant option"),
    ({"assistant.kb": "KB", "assistant.rate": "many"}, "assistant.rate='many': expected an integer"),
    ({"assistant.kb": "KB", "assistant.rewrite": "maybe"}, "expected true or false"),
    ({"assistant.rate": "3"}, "needs its knowledge base"),
])
def test_assistant_options_are_checked_at_start(kb_folder: Path, options: dict, what: str) -> None:
    options = {k: str(kb_folder) if v == "KB" else v for k, v in options.items()}
    with pytest.raises(ConfigurationError, match=what):
        create_app(ScriptedModel([]), app_options=options)


def test_assistant_mounted_in_serve_with_retrieval_testing(kb_folder: Path) -> None:
    from tests.test_assistant import routed_model

    app = create_app(routed_model(), model_name="scripted", api_key="k3y",
                     app_options={"assistant.kb": str(kb_folder), "assistant.rate": "1"})
    auth = {"Authorization": "Bearer k3y"}
    with serving(app) as url:
        assert httpx.post(f"{url}/v1/assistant/retrieve", json={"query": "vpn"}).status_code == 401
        got = httpx.post(f"{url}/v1/assistant/retrieve", headers=auth, json={"query": "reset my VPN password"}).json()
        assert got["hits"][0]["source"].startswith("vpn.md") and got["hits"][0]["accepted"] is True
        assert got["in_knowledge_base"] and isinstance(got["threshold"], float)
        assert [h["rank"] for h in got["hits"]] == list(range(1, len(got["hits"]) + 1))
        off = httpx.post(f"{url}/v1/assistant/retrieve", headers=auth, json={"query": "quantum chromodynamics"}).json()
        assert not off["in_knowledge_base"] and not any(h["accepted"] for h in off["hits"])
        # the topic is in the knowledge base (the VPN passage clears the threshold) but not the question's words
        near = httpx.post(f"{url}/v1/assistant/retrieve", headers=auth, json={
            "query": "does the VPN password portal support IPv6 tunnels and WireGuard keys?"}).json()
        assert near["hits"][0]["source"].startswith("vpn.md") and near["hits"][0]["score"] >= near["threshold"]
        assert not near["in_knowledge_base"] and near["coverage"] < near["coverage_threshold"]
        assert {"ipv6", "tunnels", "wireguard"} <= set(near["missing"]) and "password" not in near["missing"]
        # a dry run spends no rate limit: with rate 1, two dry runs then a real message all answer
        for _ in range(2):
            d = httpx.post(f"{url}/v1/assistant/decide", headers=auth, json={"text": "how do I reset my VPN password?"})
            assert d.json()["answered"] and d.json()["records"][-1]["stage"] == "check"
        real = httpx.post(f"{url}/v1/assistant/webhook", headers=auth,
                          json={"group": "g", "text": "how do I reset my VPN password?"}).json()
        assert real["answered"]
        again = httpx.post(f"{url}/v1/assistant/webhook", headers=auth,
                           json={"group": "g", "text": "how do I reset my VPN password again?"}).json()
        assert not again["answered"] and again["stage"] == "rate_limit"
        chat = httpx.post(f"{url}/v1/assistant/chat/completions", headers=auth,
                          json={"model": "hanlin-assistant", "user": "g2",
                                "messages": [{"role": "user", "content": "how do I reset my VPN password?"}]}).json()
        assert chat["choices"][0]["message"]["content"].endswith("[1].") and chat["hanlin_decision"]["answered"]
        # the served model keeps its own chat route
        plain = httpx.post(f"{url}/v1/chat/completions", headers=auth,
                           json={"model": "scripted", "messages": [{"role": "user", "content": "hi"}]})
        assert plain.status_code == 200
        pages = httpx.get(f"{url}/v1/ui/config", headers=auth).json()["pages"]
        assert [p["name"] for p in pages] == ["research", "assistant"]


def test_a_plugin_whose_routes_hook_fails_is_recorded_and_the_server_starts() -> None:
    class Broken:
        @hookimpl
        def register_routes(self, app: Any) -> None:
            raise RuntimeError("route table on fire")

    class Good:
        @hookimpl
        def register_routes(self, app: Any) -> None:
            @app.get("/v1/hello-app")
            async def hello() -> dict[str, str]:
                return {"hello": "app"}

    pm = get_plugin_manager()
    with pm.registered(Broken(), "broken-routes"), pm.registered(Good(), "good-routes"):
        app = create_app(ScriptedModel([]), model_name="scripted")
        info = {i.name: i for i in pm.infos()}
        assert info["broken-routes"].status == "failed" and "route table on fire" in info["broken-routes"].error
        assert "routes" in info["good-routes"].kinds
        with serving(app) as url:
            assert httpx.get(f"{url}/v1/hello-app").json() == {"hello": "app"}
