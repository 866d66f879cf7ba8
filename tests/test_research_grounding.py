"""What made research answers right on the multi-hop set: a child's query names its parent's answer, searchers read
the page behind a result, quote what they answer from, and the final answer keeps every node's part. Scripted
models and real files; the real-model run is tests/test_research_e2e.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tests.test_research import DOCS, PLANNER_MARK, Corpus, call, of, quoting, run, scripted

from hanlin import Message, ScriptedModel
from hanlin.plugins.apps.research.citations import Ledger, Passage
from hanlin.plugins.apps.research.grounding import (
    MAX_SENTENCES,
    answer_model,
    grounded_answer,
    name_in,
    prose,
    query_for,
    refers_back,
    sentences,
    supported_answer,
)
from hanlin.plugins.apps.research.reader import best_lines, read_pages
from hanlin.plugins.tools.search_backends import SearchHit

STARLETTE = """# starlette 1.0

starlette: The little ASGI library that shines.

```python
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
app = Starlette(debug=True, routes=routes)
```

## Features

* A lightweight, low-complexity HTTP web framework.
* WebSocket support for Starlette apps.
* In-process background tasks for Starlette apps.
* Startup and shutdown events for Starlette apps.
* Session and cookie support in Starlette apps.
* CORS, GZip, Static Files and Streaming responses for Starlette apps.
* 100% type annotated codebase, the whole of Starlette.
* Few hard dependencies, so Starlette stays small.
* Compatible with `asyncio` and `trio` backends, as Starlette runs on anyio.
* Great overall performance against independent benchmarks of Starlette.
* Test client built on `httpx2`.
* Starlette apps run on Uvicorn or any ASGI server.
"""


def test_a_child_query_names_its_parents_answer() -> None:
    assert query_for("What is the test client of that toolkit built on?", ["Starlette"]) == \
        "What is the test client of Starlette built on?"
    assert query_for("What is that library's tagline?", ["requests"]) == "What is requests's tagline?"
    # no reference back: the parent's answer is added to the query; no parent: the question as it is
    assert query_for("Who maintains Click?", ["Pallets"]) == "Who maintains Click? Pallets"
    assert query_for("Who maintains Click?", []) == "Who maintains Click?"
    assert refers_back("Which organization develops that library?") and refers_back("What is its license?")
    assert not refers_back("Which organization develops Click?")


def test_rare_query_words_rank_the_quotes_and_a_long_parent_answer_is_named_by_what_it_adds() -> None:
    """Seen on the default model (trafilatura-justext): the page's own name, on most sentences, tied the "title:
    summary" line with the answer line on word count, the first was quoted and, whole, became the next hop's query."""
    passages = {1: "trafilatura 2.3.1: trafilatura: Python & Command-line tool to gather text and metadata on the Web.",
                4: "Main text (own rule-based extractor with jusText and readability-lxml as fallbacks)",
                5: "Trafilatura is a comprehensive Python package and command-line tool for text."}
    question = "Trafilatura's main text extractor falls back on which boilerplate tool?"
    quotes = sentences(passages, question)
    assert quotes[0].startswith("[4] Main text") and len(quotes) == 3
    assert sentences({1: "An unrelated line about nothing much.", 2: "Test client built on httpx2."},
                     "test client built") == ["[2] Test client built on httpx2."]
    answer = "Main text (own rule-based extractor with jusText and readability-lxml as fallbacks)"
    assert name_in(answer, question) == "own rule-based jusText readability-lxml fallbacks"
    assert query_for("How does that tool's summary describe it?", [name_in(answer, question)]) == \
        "How does own rule-based jusText readability-lxml fallbacks's summary describe it?"
    assert name_in("Starlette", "which ASGI toolkit") == "Starlette"  # a short answer is passed on as it is
    # a name the sentence marks as code is the name (httpx-requests: "Features well-established requests gives")
    assert name_in("Features: HTTPX builds on the well-established usability of `requests`, and gives you",
                   "HTTPX builds on the usability of which library?") == "requests"


def test_an_answer_another_shown_sentence_supports_is_kept_with_that_sentence_as_its_quote() -> None:
    """Seen on the default model (joblib-cloudpickle): the answer "cloudpickle.Pickler" was right, its quote (a
    joblib sentence) was not; the sentence that says it was among those shown."""
    shown = ["[2] Joblib supports Python >= 3.10.",
             "[1] cloudpickle 3.1.3: cloudpickle: Pickler class to extend the standard pickle.Pickler functionality"]
    question = "Which standard-library class does cloudpickle extend?"
    assert supported_answer("cloudpickle.Pickler", shown[0], question, shown) == ("cloudpickle.Pickler", True, shown[1])
    # nothing shown says it: the chosen quote's sentence is the answer, as before
    assert supported_answer("marshal.Marshaller", shown[0], question, shown) == (
        "Joblib supports Python >= 3.10", False, shown[0])


def test_the_reader_finds_the_line_the_snippet_missed(tmp_path: Path) -> None:
    page = tmp_path / "starlette.md"
    page.write_text(STARLETTE)
    # "starlette" is on most lines (weighs little); "test", "client", "built" are on one
    assert best_lines(page.as_uri(), "What is the test client of Starlette built on?", k=1) == \
        ["Test client built on `httpx2`."]
    ledger, local = Ledger(), {}
    local[1] = ledger.add(Passage(url=page.as_uri(), title="starlette", text="from starlette.routing import Route"))
    text = read_pages(ledger, local, "test client Starlette built", k=1)
    assert text == "[2] starlette: Test client built on `httpx2`." and len(local) == 2
    assert read_pages(ledger, local, "test client Starlette built", k=1) == ""  # read already: no new number
    assert best_lines("https://example.com/x", "anything at all", k=1) == []  # live pages are web_fetch's job


def test_a_searcher_reads_the_page_behind_its_result_and_cites_the_line_it_quotes(tmp_path: Path) -> None:
    page = tmp_path / "starlette.md"
    page.write_text(STARLETTE)

    class Index:  # the snippet an index shows for the whole query: the right page, the wrong part of it
        def search(self, query: str, max_results: int) -> list[SearchHit]:
            return [SearchHit(title="starlette 1.0", url=page.as_uri(), snippet="from starlette.routing import Route")]

    model = scripted([call("add_node", id="client", question="What is the test client of Starlette built on?"),
                      call("wait"), call("finish", answer="httpx2 [2].")],  # the read line: global [2]
                     answers={"What is the test client of Starlette built on?": "httpx2"})
    result = run(model, Index(), max_results=1)
    task = next(m.content for msgs, _ in model.calls for m in msgs
                if m.role == "user" and "Search results:" in m.content)
    assert "Read in those pages:\n[2] starlette 1.0: Test client built on `httpx2`." in task
    assert result.answer == "httpx2 [1]." and result.references[0].passage == "Test client built on `httpx2`."
    assert result.references[0].url == page.as_uri()


def test_the_quote_is_one_of_the_shown_sentences_ranked_by_the_query() -> None:
    filler = " ".join(f"Filler sentence number {i}." for i in range(20))
    passages = {1: "Starlette is a toolkit. It is fast.", 2: f"--- Test client built on httpx2. {filler}"}
    quotes = sentences(passages, "test client built")
    assert quotes == ["[2] Test client built on httpx2."]  # sentences sharing no word with the query: not offered
    many = " ".join(f"The test client is built on httpx{i}." for i in range(20))
    offered = sentences({1: many}, "test client built")
    assert len(offered) == MAX_SENTENCES
    model = answer_model(offered)
    assert model.model_json_schema()["properties"]["quote"]["enum"] == offered
    with pytest.raises(ValidationError):
        model.model_validate({"quote": "[3] a sentence nobody showed", "answer": "x"})
    # the short answer stands when the quote says what it adds to the question, else the quote is the answer
    quote = "[2] Test client built on httpx2."
    assert grounded_answer("httpx2", quote, "test client of Starlette built on") == ("httpx2", True)
    made_up = grounded_answer("prompt_toolkit", quote, "test client of Starlette")
    assert made_up == ("Test client built on httpx2", False)
    assert grounded_answer("Starlette", quote, "test client of Starlette built on") == \
        ("Test client built on httpx2", False)
    assert grounded_answer("3.10", "[1] Python 3.10 or newer.", "which Python") == ("3.10", True)
    assert grounded_answer("[", "[1] [Uvicorn] runs it.", "which server") == ("[Uvicorn] runs it", False)  # seen


def test_a_final_answer_that_drops_a_nodes_part_gets_it_back_with_its_citation() -> None:
    model = scripted([
        call("add_node", id="author", question="who wrote alpha"),
        call("add_node", id="born", question="where was Ada born", depends_on=["author"]),
        call("wait"),
        call("finish", answer="Ada wrote alpha [1]."),  # the birthplace the second node found is lost
    ], answers={"who wrote alpha": "Ada wrote alpha", "where was Ada born": "London"})
    result = run(model, max_parallel=1)
    assert result.answer == "Ada wrote alpha [1]. London [2]."
    assert [r.passage for r in result.references] == ["alpha is written by Ada.", "Ada was born in London."]
    assert any("left out the answers of ['born']" in e.text for e in of(result, "planner_note"))
    # the node's query named its parent's answer, not "the author"
    queries = [e.text for e in of(result, "searcher_step") if e.node_id == "born" and e.kind == "tool_call"]
    assert queries == ['search({"query": "where was Ada born Ada wrote alpha"})']


def test_a_part_is_lost_when_its_new_words_are_missing_even_if_the_question_words_are_there() -> None:
    """Seen on the default model: the node answered "ASGI toolkit: Starlette", the planner finished with "an ASGI
    toolkit [1]": the words the node added (Starlette) are what counts."""
    model = scripted([call("add_node", id="toolkit", question="which ASGI toolkit is alpha written with"),
                      call("wait"), call("finish", answer="an ASGI toolkit [1].")],
                     answers={"which ASGI toolkit is alpha written with": "ASGI toolkit: Ada"})
    result = run(model)
    assert result.answer == "an ASGI toolkit [1]. ASGI toolkit: Ada [1]."


def test_a_split_step_that_refers_back_waits_for_the_step_before() -> None:
    """The 0.5B split said needs_previous: false for "Which organization develops that library?": a step that
    refers back depends on the step before it anyway, and its query names that step's answer."""
    from hanlin.plugins.apps.research.decompose import SYSTEM

    base = scripted([call("wait"), call("finish", answer="Ada [1], London [2].")],
                    answers={"who wrote alpha": "Ada", "where was that author born": "London"})

    def reply(messages: list[Message], params: Any) -> Any:
        if messages[0].content == SYSTEM:
            return json.dumps({"steps": [{"question": "who wrote alpha", "needs_previous": False},
                                         {"question": "where was that author born", "needs_previous": False}]})
        return base._fn(messages, params)

    result = run(ScriptedModel(reply), decompose=True, max_parallel=2)
    assert [e.depends_on for e in of(result, "node_added")] == [[], ["q1"]]
    queries = [e.text for e in of(result, "searcher_step") if e.node_id == "q2" and e.kind == "tool_call"]
    assert queries == ['search({"query": "where was Ada born"})']
    assert result.answer == "Ada [1], London [2]."


def test_a_searcher_that_only_searches_is_answered_from_what_it_read() -> None:
    """With room for more steps a searcher may search again; one that never answers still gets one answer decoded
    under the quote schema over every result it was shown (its own searches included)."""
    plan = iter([call("add_node", id="a", question="who wrote beta"), call("wait"), call("finish", answer="Bob [1].")])

    def reply(messages: list[Message], params: Any) -> Any:
        if PLANNER_MARK in messages[0].content:
            return next(plan)
        if params.constraint is not None and params.constraint.json_schema is not None and \
                "quote" in params.constraint.json_schema.get("properties", {}):
            assert "[2] ada: Ada was born in London." in messages[-1].content  # its own search is quotable
            return quoting(messages, "Bob")
        return call("search", query="Ada born")  # the searcher agent's every step

    result = run(ScriptedModel(reply), Corpus(DOCS), searcher_max_steps=2, max_results=1)
    assert of(result, "node_answered")[0].answer == "Bob [1]."
    assert any("answering from the first results" in e.text for e in of(result, "searcher_step"))
    assert result.answer == "Bob [1]." and result.references[0].passage == "beta is written by Bob."



def test_the_measured_configuration_is_a_dataset_variant() -> None:
    """`hanlin eval -d research` runs the seeded plan, as `hanlin research` does; `research:unsplit` the planner agent
    alone (the CLI passes a subset, not options)."""
    from hanlin import ConfigurationError
    from hanlin.plugins.evaluators.datasets import open_dataset

    assert open_dataset("research:decompose").decompose is True
    assert open_dataset("research").decompose is True
    assert open_dataset("research:unsplit").decompose is False
    with pytest.raises(ConfigurationError, match="research:unsplit"):
        open_dataset("research:mindsearch")


def description(name: str) -> str:
    """The real long description (METADATA) of an installed package, as the package corpus holds it."""
    from hanlin.plugins.apps.research.corpus import package_documents

    return package_documents([name])[f"{name}.md"]


def test_badges_links_headings_code_and_html_are_not_quotable() -> None:
    """Lines of real package descriptions: a badge row, a logo, a heading, a list of links, code, a table rule give
    no quote; link text and prose around a link are kept, without the URL."""
    pydantic, numpy = description("pydantic"), description("numpy")
    badges = next(line for line in pydantic.splitlines() if line.startswith("[!["))
    assert prose(badges) == "" and prose(" ".join(pydantic.splitlines()[4:9])) == ""  # one badge, a row of them
    assert prose(next(line for line in numpy.splitlines() if line.startswith("<img"))) == ""  # the logo
    assert prose("## Pydantic Logfire :fire:") == "" and prose("|---|:---:|") == ""
    assert prose("[Learn more](https://pydantic.dev/logfire/) | [Docs](https://docs.pydantic.dev)") == ""
    assert prose(">>> import requests") == "" and prose("```python from pydantic import BaseModel ```") == ""
    assert prose("See [documentation](https://docs.pydantic.dev/) for more details.") == \
        "See documentation for more details."
    assert prose("draws inspiration from `many sources <https://github.com/python-trio/trio/wiki>`__, in "
                 "particular Curio.") == "draws inspiration from many sources, in particular Curio."
    assert prose("Requests is a simple, yet elegant, HTTP library.") == \
        "Requests is a simple, yet elegant, HTTP library."


def test_what_the_index_shows_of_a_readme_quotes_its_prose_not_its_markup(tmp_path: Path) -> None:
    """Snippets the local index shows of real descriptions: requests' opens with a heading and a row of badges whose
    URLs name the package again and again (as the index shows it, heading as a label and whitespace folded, the row
    was one "sentence" that shared the package name with the query more than any prose, and it was quoted), numpy's
    with a logo and a list of links, hypothesis-graphql's answer sentence holds a link."""
    from hanlin.plugins.tools.search_backends import LocalIndexBackend

    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("requests", "numpy", "hypothesis-graphql", "trafilatura", "pydantic"):
        (folder / f"{name}.md").write_text(description(name), encoding="utf-8")
    index = LocalIndexBackend(folder, snippet_chars=400)
    expected = {"What is requests?": None,
                "What is numpy?": "NumPy is the fundamental package for scientific computing with Python.",
                "Which ready-made tool runs on top of hypothesis-graphql?": "For a ready-made tool, try Schemathesis: "
                "it runs on top of this library and reports server crashes without any test code."}
    for query, sentence in expected.items():
        passages = {n: hit.snippet for n, hit in enumerate(index.search(query, 3), 1)}
        assert any("](" in text or "**" in text for text in passages.values()), passages  # markup was shown
        quotes = sentences(passages, query)
        assert quotes and not [q for q in quotes if re.search(r"\]\(|https?:|\*\*|```|<\w|\{|>>>", q)], quotes
        assert sentence is None or f"[1] {sentence}" in quotes, quotes


def test_the_reader_reads_sentences_that_the_citation_check_finds_in_the_document(tmp_path: Path) -> None:
    """The reader's lines of real descriptions (markdown with badges, reStructuredText wrapped over lines) are
    prose, whole sentences, and each is accepted by the evaluation's citation check as it is cited."""
    from hanlin.plugins.apps.research.evaluate import passage_in_document
    from hanlin.plugins.apps.research.events import Reference
    from hanlin.plugins.apps.research.reader import document_lines

    for name in ("pydantic", "trafilatura", "numpy", "pluggy"):
        page = tmp_path / f"{name}.md"
        page.write_text(description(name), encoding="utf-8")
        lines = document_lines(page.as_uri())
        assert len(lines) >= 5, (name, lines)
        assert not [line for line in lines if "![" in line or line.startswith(("#", "<", "|", "```"))], lines
        for line in lines:
            assert passage_in_document(Reference(number=1, url=page.as_uri(), passage=line)), (name, line)
