"""The research app's loop logic on scripted models (planner protocol, failures, concurrency, citations), and the
event trace. The real-model end to end is in tests/test_research_e2e.py."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hanlin import Completion, ConfigurationError, Message, ModelError, ScriptedModel, ToolCall
from hanlin.plugins.apps.research.citations import Ledger, Passage, cited, remap
from hanlin.plugins.apps.research.decompose import SYSTEM as DECOMPOSE_SYSTEM
from hanlin.plugins.apps.research.events import load_trace
from hanlin.plugins.apps.research.graph import PlanError, PlanGraph
from hanlin.plugins.apps.research.grounding import sentences
from hanlin.plugins.apps.research.pipeline import Research, replay
from hanlin.plugins.tools.search_backends import SearchHit

PLANNER_MARK = "search assistant answers for you"


def call(name: str, **arguments: Any) -> Completion:
    return Completion(text="", tool_calls=[ToolCall(name=name, arguments=arguments)])


class Corpus:
    """A search backend over a dict of documents: a hit for every document sharing a word with the query."""

    def __init__(self, docs: dict[str, str], delay: float = 0.0, fail_on: str | None = None) -> None:
        self.docs, self.delay, self.fail_on = docs, delay, fail_on
        self.lock = threading.Lock()

    def search(self, query: str, max_results: int) -> list[SearchHit]:
        if self.fail_on and self.fail_on in query:
            raise RuntimeError("index is corrupt")
        time.sleep(self.delay)
        words = set(query.lower().split())
        overlap = {name: len(words & set(text.lower().replace(".", "").split())) for name, text in self.docs.items()}
        ranked = sorted((name for name in self.docs if overlap[name]), key=lambda name: -overlap[name])
        return [SearchHit(title=name, url=f"file:///docs/{name}.md", snippet=self.docs[name])
                for name in ranked][:max_results]


DOCS = {"alpha": "alpha is written by Ada.", "ada": "Ada was born in London.", "beta": "beta is written by Bob."}


def scripted(planner: list[Completion | str], answers: dict[str, str] | None = None) -> ScriptedModel:
    """Planner replies in order; each searcher searches its question once, then answers ``answers[question]``
    (default: the first result cited as [1])."""
    plan = iter(planner)
    lock = threading.Lock()

    def reply(messages: list[Message], params: Any) -> Completion | str:
        if messages[0].content == DECOMPOSE_SYSTEM:
            return "{}"  # no split: the scripted planner plans, as it does when a test turns the split off
        if PLANNER_MARK in messages[0].content:
            with lock:
                return next(plan)
        question = next(m.content for m in messages if m.role == "user").splitlines()[0].removeprefix("Question: ")
        if "broken" in question:
            raise ModelError(f"the searcher's model failed on {question!r}")
        text = (answers or {}).get(question, f"{question.rstrip('?')}: see [1].")
        return quoting(messages, text)

    return ScriptedModel(reply)


def quoting(messages: list[Message], answer: str) -> str:
    """A searcher's answer as its schema asks: the shown sentence (labelled "[n] ...") that shares the most words with
    ``answer`` as the quote (the first one if none does), and ``answer``."""
    task = next(m.content for m in messages if m.role == "user")
    passages = {int(n): text for n, text in re.findall(r"^\[(\d+)\] [^:\n]+: (.*)$", task, re.MULTILINE)}
    said = set(re.findall(r"[a-z]+", answer.lower()))
    quotes = sentences(passages)
    quote = max(quotes, key=lambda q: (len(said & set(re.findall(r"[a-z]+", q.lower()))), -quotes.index(q)))
    return json.dumps({"quote": quote, "answer": answer})


def run(model: ScriptedModel, backend: Any = None, **options: Any) -> Any:
    options.setdefault("planner_protocol", "tools")
    options.setdefault("decompose", False)  # these scripts start at the planner agent; the split has its own tests
    options.setdefault("searcher_protocol", "tools")
    research = Research(model, backend or Corpus(DOCS), **options)
    return research.run("Where was the author of alpha born?")


def of(result: Any, kind: str) -> list[Any]:
    return [e for e in result.events if e.type == kind]


def test_two_hop_plan_answers_with_valid_citations(tmp_path: Path) -> None:
    model = scripted([
        call("add_node", id="author", question="who wrote alpha"),
        call("add_node", id="born", question="where was Ada born", depends_on=["author"]),
        call("wait"),
        call("finish", answer="Ada wrote alpha [1] and was born in London [2]. Also [9]."),
    ], answers={"who wrote alpha": "Ada wrote alpha [1].", "where was Ada born": "London [1]."})
    result = run(model)
    assert result.status == "answered"
    assert [e.node_id for e in of(result, "node_added")] == ["author", "born"]
    assert result.answer == "Ada wrote alpha [1] and was born in London [2]. Also."
    assert [(r.number, r.passage) for r in result.references] == [(1, "alpha is written by Ada."),
                                                                  (2, "Ada was born in London.")]
    flagged = of(result, "citation_flagged")
    assert [(f.where, f.number) for f in flagged] == [("final", 9)]
    # the dependent node was given its parent's answer (without citation numbers)
    born_task = next(m for msgs, _ in model.calls for m in msgs if m.role == "user" and "where was Ada" in m.content)
    assert "Ada wrote alpha." in born_task.content
    # the dependent node started only after its parent ended
    ends = {e.node_id: e.t for e in of(result, "node_answered")}
    starts = {e.node_id: e.t for e in of(result, "node_started")}
    assert starts["born"] >= ends["author"]


@pytest.mark.parametrize(("bad", "kind"), [
    (call("add_node", id="x", question="who is x", depends_on=["nope"]), "unknown_parent"),
    (call("add_node", id="x", question="who is x", depends_on=["x"]), "cycle"),
    (call("add_node", id="a", question="who wrote beta"), "duplicate_id"),
    (call("add_node", id="x y", question="who wrote beta"), "malformed"),
    (call("add_node", id="x", question=""), "malformed"),
    (call("add_node", id="x", question="who is x", depends_on=[3]), "malformed"),
    (call("add_node", id="c", question="who wrote beta", depends_on=["b"]), "too_deep"),
])
def test_planner_mistakes_are_observations(bad: Completion, kind: str) -> None:
    model = scripted([
        call("add_node", id="a", question="who wrote alpha"),
        call("add_node", id="b", question="where was Ada born", depends_on=["a"]),
        bad,
        call("wait"),
        call("finish", answer="Ada [1]."),
    ])
    result = run(model, max_depth=2)
    rejected = of(result, "plan_rejected")
    assert [r.kind for r in rejected] == [kind], rejected
    # the planner read the refusal as its observation, and the run still answered
    planner_calls = [msgs for msgs, _ in model.calls if PLANNER_MARK in msgs[0].content]
    observation = [m for m in planner_calls[3] if m.role == "tool"][-1].content
    assert observation.startswith("refused") or "invalid arguments" in observation, observation
    assert result.status == "answered" and result.references


def test_too_many_nodes() -> None:
    model = scripted([
        call("add_node", id="a", question="who wrote alpha"),
        call("add_node", id="b", question="who wrote beta"),
        call("add_node", id="c", question="where was Ada born"),
        call("wait"),
        call("finish", answer="Ada [1]."),
    ])
    result = run(model, max_nodes=2)
    assert [r.kind for r in of(result, "plan_rejected")] == ["too_many_nodes"]
    assert len(of(result, "node_added")) == 2 and result.status == "answered"


def test_failing_searcher_marks_node_failed_and_planner_replans() -> None:
    model = scripted([
        call("add_node", id="a", question="who wrote alpha broken"),
        call("wait"),
        call("add_node", id="a2", question="who wrote alpha"),
        call("wait"),
        call("finish", answer="Ada wrote it [1]."),
    ])
    result = run(model)
    failed = of(result, "node_failed")
    assert [f.node_id for f in failed] == ["a"] and "searcher's model failed" in failed[0].error
    planner_calls = [msgs for msgs, _ in model.calls if PLANNER_MARK in msgs[0].content]
    wait_result = [m for m in planner_calls[2] if m.role == "tool"][-1].content
    assert "a (who wrote alpha broken) FAILED" in wait_result
    assert result.status == "answered" and result.references[0].passage == "alpha is written by Ada."


def test_searcher_citing_a_result_it_never_saw_is_flagged() -> None:
    model = scripted([call("add_node", id="a", question="who wrote alpha"), call("wait"),
                      call("finish", answer="Ada [1] [2].")],
                     answers={"who wrote alpha": "Ada [1][4]."})
    result = run(model)
    # the searcher's own "[4]" is no citation (its quote's number is), so only the final answer's [2] is flagged
    assert [(f.where, f.number) for f in of(result, "citation_flagged")] == [("final", 2)]
    assert of(result, "node_answered")[0].answer == "Ada [1]."
    assert result.answer == "Ada [1]." and len(result.references) == 1


def test_independent_nodes_overlap_in_time() -> None:
    model = scripted([
        call("add_node", id="a", question="who wrote alpha"),
        call("add_node", id="b", question="who wrote beta"),
        call("wait"),
        call("finish", answer="Ada [1] and Bob [2]."),
    ])
    result = run(model, Corpus(DOCS, delay=0.4), max_parallel=2)
    start = {e.node_id: e.t for e in of(result, "node_started")}
    end = {e.node_id: e.t for e in of(result, "node_answered")}
    assert start["a"] < end["b"] and start["b"] < end["a"], (start, end)

    sequential = run(scripted([
        call("add_node", id="a", question="who wrote alpha"),
        call("add_node", id="b", question="who wrote beta"),
        call("wait"),
        call("finish", answer="Ada [1] and Bob [2]."),
    ]), Corpus(DOCS, delay=0.4), max_parallel=1)
    start = {e.node_id: e.t for e in of(sequential, "node_started")}
    end = {e.node_id: e.t for e in of(sequential, "node_answered")}
    assert start["b"] >= end["a"] or start["a"] >= end["b"]


def test_finish_before_wait_is_refused_and_an_unread_plain_answer_is_not_used() -> None:
    model = scripted([
        call("add_node", id="a", question="who wrote alpha"),
        call("finish", answer="Ada [1]."),
        "Bob wrote alpha [1].",  # plain words before any node answer was read: a guess
    ])
    result = run(model)
    planner_calls = [msgs for msgs, _ in model.calls if PLANNER_MARK in msgs[0].content]
    assert "not answered yet" in [m for m in planner_calls[2] if m.role == "tool"][-1].content
    assert any("before reading any node answer" in e.text for e in of(result, "planner_note"))
    # (the searcher's "who wrote alpha: see" is not in the sentence it quotes: the quote is its answer)
    assert result.status == "answered" and result.answer == "alpha is written by Ada [1]."
    assert result.references[0].passage == "alpha is written by Ada."


def test_plain_answer_after_wait_counts_as_finish() -> None:
    model = scripted([call("add_node", id="a", question="who wrote alpha"), call("wait"), "Ada wrote alpha [1]."])
    result = run(model)
    assert result.status == "answered" and result.answer == "Ada wrote alpha [1]."


def test_a_made_up_plain_answer_is_replaced_by_the_node_answers() -> None:
    model = scripted([call("add_node", id="a", question="who wrote alpha"), call("wait"),
                      "Final Answer: The Zeta phone is made by Orbo [1], which is based in Lyon."],
                     answers={"who wrote alpha": "Ada wrote alpha [1]."})
    result = run(model, decompose=False)
    assert result.status == "answered" and result.answer == "Ada wrote alpha [1]."
    notes = [e.text for e in of(result, "planner_note")]
    assert any("zeta" in n and "not used" in n for n in notes)


def test_trace_replays(tmp_path: Path) -> None:
    model = scripted([call("add_node", id="a", question="who wrote alpha"), call("wait"),
                      call("finish", answer="Ada [1].")])
    result = run(model)
    path = result.save_trace(tmp_path / "run.jsonl")
    again = replay(load_trace(path))
    assert again.answer == result.answer and again.references == result.references
    assert [e.type for e in again.events] == [e.type for e in result.events]
    assert {"research_started", "node_added", "node_started", "searcher_step", "node_answered", "final"} <= {
        e.type for e in again.events}


def test_ledger_renumbers_globally() -> None:
    ledger = Ledger()
    a = {1: ledger.add(Passage("u1", "t", "p1")), 2: ledger.add(Passage("u2", "t", "p2"))}
    b = {1: ledger.add(Passage("u3", "t", "p3")), 2: ledger.add(Passage("u1", "t", "p1"))}  # p1 again: same number
    assert b == {1: 3, 2: 1}
    assert ledger.globalize("x [2], y [1, 2] z [7].", b) == ("x [1], y [3][1] z.", [7])
    text, refs, dropped = ledger.finalize("q [3] r [1][3] s [5]", allowed={1, 3})
    assert text == "q [1] r [2][1] s" and dropped == [5]
    assert [(r.number, r.url) for r in refs] == [(1, "u3"), (2, "u1")]
    assert cited("a [2] b [1, 2]") == [2, 1] and remap("a [1]", {}) == ("a", [1])


def test_graph_rules_directly() -> None:
    graph = PlanGraph(max_nodes=3, max_depth=2)
    graph.add("a", "who wrote alpha")
    with pytest.raises(PlanError) as err:
        graph.add("b", "where born", depends_on="a, zz")
    assert err.value.kind == "unknown_parent" and "add the parent first" in err.value.message
    assert graph.add("b", "where born", depends_on="a").depends_on == ["a"]


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ConfigurationError, match="max_nodes must be"):
        Research(ScriptedModel([]), Corpus(DOCS), max_nodes=0)
    with pytest.raises(ConfigurationError, match="not a folder"):
        Research(ScriptedModel([]), "local:/no/such/folder")
    with pytest.raises(ConfigurationError, match="unknown search"):
        Research(ScriptedModel([]), "bing")


def test_searcher_quote_is_its_citation_and_an_answer_the_quote_does_not_say_is_replaced() -> None:
    """The searcher's answer quotes a shown sentence (an enum in its schema): the quote's [n] is the citation, and a
    short answer the quote does not support (or one that only repeats the question) gives way to the quote."""
    model = scripted([call("add_node", id="a", question="who wrote alpha"),
                      call("add_node", id="b", question="who wrote beta"),
                      call("add_node", id="c", question="who wrote alpha and beta"),
                      call("add_node", id="d", question="who wrote alpha or beta"), call("wait"),
                      call("finish", answer="Ada [1], Bob [2].")],
                     answers={"who wrote alpha": "Ada wrote alpha [3]", "who wrote beta": "Carol, beta",
                              "who wrote alpha and beta": "alpha and beta", "who wrote alpha or beta": "Bob [1]"})
    result = run(model, max_parallel=1)  # one searcher at a time: the global numbers follow the plan's order
    answers = {e.node_id: e.answer for e in of(result, "node_answered")}
    assert answers["a"] == "Ada wrote alpha [1]."  # its own "[3]" is not a citation: the quote's [1] is
    assert answers["b"] == "beta is written by Bob [2]."  # "Carol" is in no sentence it was shown
    assert answers["c"].endswith("is written by Ada [1].") or answers["c"].endswith("is written by Bob [2].")
    assert answers["d"] == "Bob [2]."  # it quoted its second result, the beta sentence: that is its citation
    notes = [e.text for e in of(result, "searcher_step") if e.kind == "error"]
    assert any("'Carol, beta' is not in the sentence it quotes" in n for n in notes)
    assert any("'alpha and beta' is not in the sentence it quotes, or only repeats the question" in n for n in notes)


def test_question_set_answers_are_in_their_documents() -> None:
    """Every reference answer phrase of the multi-hop set is in the METADATA text of the documents it needs."""
    from hanlin.plugins.apps.research.corpus import package_documents
    from hanlin.plugins.apps.research.evaluate import load_questions

    items = load_questions()
    assert len(items) >= 25 and len({i["id"] for i in items}) == len(items)
    docs = package_documents(sorted({d[:-3] for i in items for d in i["documents"]}))
    for item in items:
        text = " ".join(docs[d] for d in item["documents"]).lower()
        for group in item["answers"]:
            assert any(alt.lower() in text for alt in group), (item["id"], group)
        # each part is scored on its own: no answer to one part may contain an answer to another ("sniffio" holds
        # "sniff"), or naming the first hop would score the second
        for n, group in enumerate(item["answers"]):
            others = [alt.lower() for m, g in enumerate(item["answers"]) if m != n for alt in g]
            assert not any(o in alt.lower() for alt in group for o in others), (item["id"], group)


def test_scores_count_only_passages_found_in_the_cited_document(tmp_path: Path) -> None:
    from hanlin.plugins.apps.research.evaluate import score
    from hanlin.plugins.apps.research.events import Reference

    doc = tmp_path / "starlette.md"
    doc.write_text("# Starlette\n\nStarlette is a lightweight ASGI framework/toolkit for async web services.\n")
    item = {"answers": [["starlette"], ["httpx2", "httpx"]], "documents": ["starlette.md", "fastapi.md"]}
    real = Reference(number=1, url=doc.as_uri(), passage="Starlette: Starlette is a lightweight ASGI "
                                                         "framework/toolkit for async web services.")
    made_up = Reference(number=2, url=doc.as_uri(), passage="Starlette was written in Rust by a team of ten.")
    assert score(item, "Starlette; its test client uses httpx2 [1]", [real]) == {
        "correct": 1.0, "citation_valid": 1.0, "citation_support": 0.0, "doc_recall": 0.5}
    assert score(item, "Starlette [1][2]", [real, made_up]) == {"correct": 0.0, "citation_valid": 0.5,
                                                                 "citation_support": 1.0, "doc_recall": 0.5}


def test_citation_support_checks_each_claim_against_the_passages_it_cites() -> None:
    """Citation precision on words: the text before a citation (after it, for one written first) must have at
    least half of its words in the cited passage; the question's own words are no evidence when there are others."""
    from hanlin.plugins.apps.research.evaluate import citation_support
    from hanlin.plugins.apps.research.events import Reference

    refs = [Reference(number=1, url="file:///a.md", passage="Starlette is a lightweight ASGI toolkit."),
            Reference(number=2, url="file:///b.md", passage="The test client is built on HTTPX.")]
    assert citation_support("Starlette is an ASGI toolkit [1]. Its test client is built on HTTPX [2].", refs) == 1.0
    assert citation_support("Starlette is an ASGI toolkit [2]. Its test client uses HTTPX [2].", refs) == 0.5
    assert citation_support("[1] Starlette: lightweight ASGI toolkit.", refs) == 1.0  # the citation written first
    assert citation_support("[1]", refs) == 0.0 and citation_support("Starlette, ASGI", refs) == 0.0
    assert citation_support("Its test client is built on HTTPX [3].", refs) == 0.0  # no reference [3]
    question = "Which lightweight ASGI toolkit is FastAPI built on?"
    assert citation_support("The lightweight ASGI toolkit FastAPI is built on is Starlette [1].", refs, question) == 1.0
    assert citation_support("The lightweight ASGI toolkit FastAPI is built on is Django [1].", refs, question) == 0.0


def test_a_passage_that_ends_at_a_heading_label_is_found_in_its_document(tmp_path: Path) -> None:
    """The local index labels a section with its heading ("Heading: ..."); a short passage runs on into the next
    heading, so it ends "... Heading:" (sse-starlette's and openai's first passages, cited on the default model and
    counted invalid for the colon the index added)."""
    from hanlin.plugins.apps.research.corpus import build_package_corpus
    from hanlin.plugins.apps.research.evaluate import passage_in_document
    from hanlin.plugins.apps.research.events import Reference
    from hanlin.plugins.tools.search_backends import LocalIndexBackend

    index = LocalIndexBackend(build_package_corpus(tmp_path, ["sse-starlette", "openai"]), snippet_chars=400)
    for query in ("sse-starlette SSE plugin for Starlette", "openai official Python library for the openai API"):
        hit = index.search(query, 1)[0]
        assert hit.snippet.endswith(":"), hit.snippet
        assert passage_in_document(Reference(number=1, url=hit.url, passage=hit.snippet)), hit.snippet
    made_up = Reference(number=1, url=hit.url, passage="openai: The official Python library for the Rust API:")
    assert not passage_in_document(made_up)


def test_planner_adding_no_node_falls_back_to_searching_the_question() -> None:
    model = scripted(["The Zeta phone is made by Orbo [1]."])  # copies its prompt's example, adds nothing
    result = run(model)
    assert [e.node_id for e in of(result, "node_added")] == ["question"]
    assert any("added no node" in e.text for e in of(result, "planner_note"))
    assert "Zeta" not in result.answer and result.references and result.status == "answered"


def test_cli_bad_search_is_a_clear_error_before_any_model_loads(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hanlin.cli", "research", "who wrote alpha?", "--search",
                          f"local:{tmp_path / 'missing'}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "is not a folder" in out.stderr and "local:DIR" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "hanlin.cli", "research", "q", "--search", "local:.",
                          "--max-nodes", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "max_nodes must be an integer of at least 1" in out.stderr, out.stderr


def test_eval_dataset_scores_research_beside_react_on_the_same_index(tmp_path: Path) -> None:
    """`hanlin eval -d research` on the first shipped question, over two files named like its documents: the scripted
    research run answers with valid citations of both; the scripted ReAct baseline answers nothing useful."""
    from types import SimpleNamespace

    from hanlin import get_plugin_manager

    (tmp_path / "fastapi.md").write_text("# FastAPI\n\nFastAPI stands on the shoulders of Starlette for the web parts.\n")
    (tmp_path / "starlette.md").write_text("# Starlette\n\nThe Starlette TestClient is built on httpx.\n")
    model = scripted([
        call("add_node", id="toolkit", question="FastAPI web parts toolkit"),
        call("add_node", id="client", question="Starlette TestClient built on", depends_on=["toolkit"]),
        call("wait"),
        call("finish", answer="FastAPI is built on Starlette [1], whose test client is built on httpx [2]."),
    ], answers={"FastAPI web parts toolkit": "Starlette [1].", "Starlette TestClient built on": "httpx [1]."})
    dataset = get_plugin_manager().get("evaluators", "research").factory(search=f"local:{tmp_path}",
                                                                          protocol="tools")
    result = dataset.evaluate(model, SimpleNamespace(limit=1))
    m = {k: v.value for k, v in result.metrics.items()}
    assert m["research_correct"] == 1.0 and m["research_doc_recall"] == 1.0 and m["research_citation_valid"] == 1.0
    assert m["react_correct"] == 0.0
    assert [p.group for p in result.predictions] == ["research", "react"]
    assert result.predictions[0].id == "fastapi-starlette-testclient"
    with pytest.raises(ConfigurationError, match="choose from research, react"):
        get_plugin_manager().get("evaluators", "research").factory(systems="research,mindsearch")


def test_the_question_split_seeds_the_plan_and_the_planner_goes_on_from_it() -> None:
    """One constrained split (decompose.py) adds q1 and q2 (q2 after q1); the planner is told, waits, finishes."""
    from hanlin.plugins.apps.research.decompose import SYSTEM

    base = scripted([call("wait"), call("finish", answer="Ada wrote alpha [1], born in London [2].")],
                    answers={"who wrote alpha": "Ada wrote alpha [1].", "Ada born London": "London [1]."})

    def reply(messages: list[Message], params: Any) -> Any:
        if messages[0].content == SYSTEM:
            assert params.constraint is not None and params.constraint.json_schema["required"] == ["steps"]
            return json.dumps({"steps": [{"question": "who wrote alpha", "needs_previous": False},
                                         {"question": "Ada born London", "needs_previous": True}]})
        return base._fn(messages, params)

    model = ScriptedModel(reply)
    result = run(model, decompose=True)
    added = of(result, "node_added")
    assert [(e.node_id, e.question, e.depends_on) for e in added] == [
        ("q1", "who wrote alpha", []), ("q2", "Ada born London", ["q1"])]
    planner_task = next(m.content for msgs, _ in model.calls if PLANNER_MARK in msgs[0].content
                        for m in msgs if m.role == "user")
    assert "already added" in planner_task and "q2 (Ada born London) after q1" in planner_task
    assert result.status == "answered" and len(result.references) == 2


def test_a_split_that_copies_the_question_seeds_nothing() -> None:
    import asyncio

    from hanlin.plugins.apps.research.decompose import decompose

    question = "Where was the author of alpha born?"
    model = ScriptedModel([json.dumps({"steps": [{"question": question, "needs_previous": False}]})])
    assert asyncio.run(decompose(model, question, 4)) == []
    model = ScriptedModel(["not json at all"])
    assert asyncio.run(decompose(model, question, 4)) == []


def test_a_final_answer_not_drawn_from_the_node_answers_is_refused() -> None:
    """The 0.5B planner copied its instructions' example ("The Zeta phone is made by Orbo [1]"): finish refuses an
    answer whose words mostly appear in no node answer, shows the node answers, and takes the grounded retry."""
    model = scripted([
        call("add_node", id="author", question="who wrote alpha"),
        call("wait"),
        call("finish", answer="The Zeta phone is made by Orbo [1], which is based in Lyon."),
        call("finish", answer="Ada wrote alpha [1]."),
    ], answers={"who wrote alpha": "Ada wrote alpha [1]."})
    result = run(model, decompose=False)
    assert result.status == "answered" and result.answer == "Ada wrote alpha [1]."
    refusal = next(m.content for msgs, _ in model.calls for m in msgs
                   if m.role == "tool" and m.content.startswith("refused: the answer says"))
    assert "zeta" in refusal and "author: Ada wrote alpha [1]." in refusal


def test_package_corpus_leaves_out_hanlins_own_readme(tmp_path, monkeypatch):
    """hanlin's README quotes the evaluation's questions: in the corpus it answered them with its own usage lines."""
    from hanlin.plugins.apps.research import corpus

    every = corpus.package_documents()
    assert "hanlin.md" not in every and "httpx.md" in every
    assert "hanlin.md" in corpus.package_documents(["hanlin"])  # named: a user asking about hanlin gets it
    monkeypatch.setenv("HANLIN_HOME", str(tmp_path))
    stale = tmp_path / "research" / "packages"
    stale.mkdir(parents=True)
    (stale / "hanlin.md").write_text("# hanlin\n" + "a corpus built before hanlin was left out " * 10)
    assert corpus.default_corpus_dir() == stale and not (stale / "hanlin.md").exists()
