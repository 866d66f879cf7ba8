"""The knowledge assistant (plugins/apps/assistant): each stage on a scripted model, the group semantics, the
threshold tuner against a brute-force search, and the webhook / OpenAI routes on a real loopback server."""

from __future__ import annotations

import itertools
import json
import random
import threading
from pathlib import Path

import httpx
import pytest

from hanlin import ScriptedModel
from hanlin.errors import ConfigurationError
from hanlin.plugins.apps.assistant.answer import Answer
from hanlin.plugins.apps.assistant.check import Check
from hanlin.plugins.apps.assistant.groups import Groups
from hanlin.plugins.apps.assistant.is_question import IsQuestion
from hanlin.plugins.apps.assistant.pipeline import Assistant
from hanlin.plugins.apps.assistant.records import ChatMessage, Passage
from hanlin.plugins.apps.assistant.relevance import Relevance
from hanlin.plugins.apps.assistant.retrieve import Retrieve
from hanlin.plugins.apps.assistant.rewrite import Rewrite
from hanlin.plugins.apps.assistant.scoring import SCORE_SCHEMA, ScoreFormatError
from hanlin.plugins.apps.assistant.settings import Thresholds
from hanlin.plugins.apps.assistant.tune import COVERAGE_STEPS, Row, search
from hanlin.plugins.tools.kb_index import KnowledgeIndex
from hanlin.plugins.tools.knowledge_base import KnowledgeBaseToolkit
from tests.loopback_server import serving

DOCS = {
    "vpn.md": "# VPN\n\n## Passwords\n\nReset your VPN password at the self-service portal under Account > Reset. "
              "The new password must have 14 characters.\n",
    "printer.md": "# Printers\n\n## Toner\n\nThe second-floor printer takes HP 58A toner cartridges, kept in the "
                  "supply room next to the kitchen.\n",
}
PASSAGES = [Passage(number=1, source="vpn.md › VPN › Passwords", score=3.0, text="Reset it at the portal."),
            Passage(number=2, source="printer.md › Printers", score=1.0, text="HP 58A toner.")]


@pytest.fixture(scope="module")
def kb(tmp_path_factory) -> KnowledgeBaseToolkit:
    docs = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    return KnowledgeBaseToolkit(index=KnowledgeIndex.build(docs, backend="bm25"))


def score(n: int) -> str:
    return json.dumps({"score": n})


# ---- stages ----------------------------------------------------------------------------------------
def test_is_question_drops_short_messages_without_asking_the_model() -> None:
    model = ScriptedModel([])
    record = IsQuestion(model).run("ok")
    assert not record.passed and "too short" in record.reason and model.calls == []


def test_is_question_scores_under_a_json_schema_and_applies_the_threshold() -> None:
    model = ScriptedModel([score(9), score(2)])
    stage = IsQuestion(model, threshold=6)
    yes, no = stage.run("how do I reset my VPN password?"), stage.run("good morning everyone")
    assert (yes.passed, yes.score, no.passed, no.score) == (True, 9, False, 2)
    assert "2/10" in no.reason and "threshold 6" in no.reason
    assert all(params.constraint.json_schema == SCORE_SCHEMA for _, params in model.calls)


@pytest.mark.parametrize("reply", ["yes, it is a question", '{"score": 11}', '{"score": "7"}', "[7]", '{"score": true}'])
def test_a_nonsense_score_is_a_clear_error(reply) -> None:
    with pytest.raises(ScoreFormatError, match="is_question.*constrained decoding"):
        IsQuestion(ScriptedModel([reply])).run("how do I reset my VPN password?")
    with pytest.raises(ScoreFormatError, match="relevance"):
        Relevance(ScriptedModel([reply])).run("q", PASSAGES)


def test_retrieve_is_silent_below_the_threshold_and_numbers_what_passes(kb) -> None:
    passages, record = Retrieve(kb, top_k=2, threshold=0.5).run("reset VPN password")
    assert record.passed and passages[0].number == 1 and passages[0].source.startswith("vpn.md")
    assert all(p.score >= 0.85 * passages[0].score for p in passages)
    # which passages go to the model does not depend on the threshold (so thresholds can be tuned by replay)
    assert Retrieve(kb, top_k=2, threshold=-10.0).run("reset VPN password")[0] == passages
    passages, record = Retrieve(kb, top_k=2, threshold=0.5).run("what is the weather in Paris")
    assert not record.passed and passages == [] and "below the rejection threshold 0.500" in record.reason


def test_coverage_weighs_rare_words_and_names_the_missing_ones() -> None:
    from hanlin.plugins.apps.assistant.coverage import Coverage

    chunks = ["install the package with pip", "install the server with pip", "install the cli with pip, then "
              "configure the proxy", "retries are configured per client"]
    cov = Coverage(chunks)
    assert cov.weight("proxy") > cov.weight("instal")  # a word in one chunk outweighs one in three ("install" stemmed)
    full = cov.of("How do I install the proxy?", [chunks[2]])
    assert full.share == 1.0 and full.missing == []
    part = cov.of("How do I install a SOCKS proxy with retries?", [chunks[2]])
    assert part.missing == ["socks", "retries"]  # rarest first: SOCKS is in no chunk, retries in one
    # one of two words covered each time, but a rare word missing costs more than a common one
    assert 0 < cov.of("configure socks", [chunks[2]]).share < 0.5 < cov.of("configure install", [chunks[3]]).share < 1
    assert cov.of("hi!", chunks).share == 0.0  # no content words: nothing a passage could cover


def test_retrieve_is_silent_when_the_passages_miss_the_question_words(kb) -> None:
    """Same topic (the VPN passage scores well) but not this question (IPv6 tunnels): silence, naming the words."""
    question = "does the VPN password portal support IPv6 tunnels and WireGuard keys?"
    passages, record = Retrieve(kb, top_k=2, threshold=0.5, coverage=0.3).run(question)
    assert not record.passed and passages == [] and record.score >= 0.5
    assert "the knowledge base has the topic but not this question" in record.reason
    assert "missing: support, ipv6, tunnels, wireguard" in record.reason
    assert record.detail["coverage"] < 0.3
    passages, record = Retrieve(kb, top_k=2, threshold=0.5, coverage=0.3).run("how do I reset my VPN password?")
    assert record.passed and passages and record.detail["coverage"] > 0.9 and record.detail["missing"] == []


def test_relevance_passes_and_refuses_on_its_threshold() -> None:
    stage = Relevance(ScriptedModel([score(8), score(3)]), threshold=5)
    assert stage.run("q", PASSAGES).passed
    refused = stage.run("q", PASSAGES)
    assert not refused.passed and "does not answer" in refused.reason


def test_answer_is_decoded_under_a_schema_whose_source_is_a_given_passage() -> None:
    model = ScriptedModel([json.dumps({"source": 1, "answer": "Use the portal [2]."})])
    text, record = Answer(model).run("how do I reset my password?", PASSAGES)
    prompt, params = model.calls[0][0][-1].content, model.calls[0][1]
    assert text == "Use the portal [1]." and record.passed and record.detail["format"] == "json"
    assert "[1] (vpn.md › VPN › Passwords)" in prompt and "[2] (printer.md" in prompt
    schema = params.constraint.json_schema
    assert schema["properties"]["source"]["enum"] == [1, 2] and schema["required"] == ["source", "answer"]


def test_answer_grammar_cannot_cite_a_passage_it_was_not_given() -> None:
    from hanlin.grammar import json_schema_grammar
    from hanlin.plugins.apps.assistant.answer import answer_schema

    grammar = json_schema_grammar(answer_schema([1, 2]))
    assert 'root--source ::= "1" | "2"\n' in grammar


def test_an_answer_in_free_text_is_read_as_written() -> None:
    text, record = Answer(ScriptedModel(["Use the portal [1]."])).run("q", PASSAGES)
    assert text == "Use the portal [1]." and record.detail["format"] == "text"
    empty, record = Answer(ScriptedModel([json.dumps({"source": 2, "answer": " [2] "})])).run("q", PASSAGES)
    assert empty == "" and not record.passed and "empty" in record.reason


@pytest.mark.parametrize(("answer", "why"), [
    ("I don't know.", "does not know"), ("I’m not sure, maybe the portal [1].", "does not know"),
    ("Use the portal.", "cites no passage"), ("Use the portal [3].", "[3] it was not given"),
    ("Ask about the salary bands [1].", "banned topic 'salary'"), ("[1] [2]", "nothing besides its citations"),
    ("The portal takes HP 59A toner [1].", "states 59A, which the cited passage(s) [1] do not contain"),
    ("Call the helpdesk hotline and ask an administrator [1].", "only 0% of what the answer adds to the question"),
])
def test_check_refuses_bad_answers(answer, why) -> None:
    record = Check(banned=["salary"]).run(answer, PASSAGES)
    assert not record.passed and why in record.reason


def test_check_passes_a_cited_answer() -> None:
    record = Check(banned=["salary"]).run("Reset it at the portal [1], toner is HP 58A [2].", PASSAGES)
    assert record.passed and record.detail["cited"] == [1, 2] and record.score == 1.0


def test_check_measures_support_on_what_the_answer_adds_to_the_question() -> None:
    """Restating the question is no evidence: the invented part alone is measured, so repeating the question's
    words cannot carry an answer over the line, and an answer that only restates it passes on its citation."""
    question = "Where do I reset my VPN password quickly?"
    made_up = "To reset your VPN password quickly, phone the helpdesk administrator [1]."
    record = Check().run(made_up, PASSAGES, question)
    assert not record.passed and record.detail["not_in_sources"] == ["phone", "helpdesk", "administrator"]
    assert Check().run("You reset your VPN password at the portal [1].", PASSAGES, question).passed
    assert Check().run("Reset your VPN password quickly [1].", PASSAGES, question).passed
    assert Check().run("Reset it at the portal, e.g. on a phone [1].", PASSAGES, question).detail["not_in_sources"] \
        == ["phone"]  # "e.g." is no claim


def test_numbers_and_code_names_are_claims_found_only_as_whole_tokens() -> None:
    """The default model's made-up answers: "the default timeout is 10 seconds" over a passage with "100%", "6
    connections", "use the `unregister` method" -- each names something the cited passage must hold whole."""
    hundred = [Passage(number=1, source="a.md", score=1.0, text="100% test coverage; the portal resets 3 times.")]
    ten = Check().run("The default timeout is 10 seconds [1].", hundred, "What is the default timeout?")
    assert not ten.passed and "states 10," in ten.reason
    six = Check().run("It handles 6 connections at the portal [1].", hundred, "How many connections?")
    assert not six.passed and "states 6," in six.reason
    assert Check().run("The portal resets 3 times [1].", hundred, "How often does the portal reset?").passed
    code = Check().run("Use the `unregister` method at the portal [1].", PASSAGES, "How do I remove a VPN user?")
    assert not code.passed and "states unregister," in code.reason
    assert Check().run("Use the `portal` [1].", PASSAGES, "How do I reset it?").passed  # a code name it holds


def test_a_how_question_s_own_names_are_context_a_yes_no_question_s_are_claims() -> None:
    """'How do I ... example.py?' -- the user's file is no claim about the docs; 'Does the VPN support IPv6?' 'Yes,
    ... IPv6' affirms exactly what the passages must say."""
    how = Check().run("Reset the password for config.yaml at the portal [1].", PASSAGES,
                      "How do I reset the VPN password for config.yaml?")
    assert how.passed, how.reason
    yes = Check().run("Yes, the VPN supports IPv6 [1].", PASSAGES, "Does the VPN support IPv6?")
    assert not yes.passed and "states IPv6" in yes.reason


def test_a_bare_yes_answers_a_yes_no_question_when_its_passage_says_what_the_question_asks() -> None:
    passed = Check().run("Yes [1].", PASSAGES, "Can I reset the VPN password at the portal?")
    assert passed.passed, passed.reason
    made_up = Check().run("Yes [1].", PASSAGES, "Does the VPN support IPv6?")
    assert not made_up.passed and "states IPv6" in made_up.reason  # the question's claim is not in passage [1]
    assert not Check().run("Yes [1].", PASSAGES, "Which portal resets passwords?").passed  # not a yes/no question


def test_a_token_found_in_another_given_passage_gets_its_citation() -> None:
    """The small model often cites the passage next to the one it used: the citation is repaired, not the answer
    lost; a token in no given passage is still refused."""
    record = Check().run("Reset it at the portal; the toner is HP 58A [1].", PASSAGES, "what toner and where?")
    assert record.passed and record.detail["answer"] == "Reset it at the portal; the toner is HP 58A [1][2]."
    assert record.detail["cited"] == [1, 2]
    assert not Check().run("The toner is HP 59A [1].", PASSAGES).passed  # 59A is nowhere


def test_the_pipeline_sends_the_answer_with_the_repaired_citations(kb) -> None:
    model = ScriptedModel([score(9), score(9), json.dumps({"source": 1, "answer": "The toner is HP 58A"})])
    decision = Assistant(model, kb, thresholds=Thresholds(retrieval=0.0)).handle("password toner")
    assert [p.source.split(" ")[0] for p in decision.passages] == ["vpn.md", "printer.md"]
    assert decision.answered, decision.reason
    assert decision.answer == "The toner is HP 58A [1][2]" and decision.citations == [1, 2]


def test_rewrite_resolves_a_pronoun_from_the_group_history_only_when_there_is_one() -> None:
    model = ScriptedModel(["How do I reset the VPN password?"])
    stage = Rewrite(model)
    same, record = stage.run("how do I reset my VPN password?", [("ann", "hi")])
    assert same == "how do I reset my VPN password?" and model.calls == [] and "kept" in record.reason
    text, record = stage.run("how do I reset it?", [("bob", "my VPN password expired")])
    assert text == "How do I reset the VPN password?" and "bob: my VPN password expired" in model.calls[0][0][-1].content


# ---- the pipeline ----------------------------------------------------------------------------------
def scripted_assistant(kb, replies, **options) -> Assistant:
    return Assistant(ScriptedModel(replies), kb, thresholds=Thresholds(retrieval=0.5), **options)


def test_an_answer_passes_every_stage_and_records_each(kb) -> None:
    decision = scripted_assistant(kb, [score(9), score(8), "Reset it at the self-service portal [1]."]).handle(
        ChatMessage(group="g", sender="ann", text="how do I reset my VPN password?"))
    assert decision.answered and decision.citations == [1] and decision.stage == "check"
    assert [r.stage for r in decision.records] == ["is_question", "retrieve", "relevance", "answer", "check"]
    assert all(r.passed and r.reason for r in decision.records)


@pytest.mark.parametrize(("text", "replies", "stage"), [
    ("hello everyone, happy friday", [score(1)], "is_question"),
    ("what is the weather in Paris today?", [score(9)], "retrieve"),
    ("how do I reset my VPN password?", [score(9), score(2)], "relevance"),
    ("how do I reset my VPN password?", [score(9), score(9), "I don't know."], "check"),
])
def test_silence_is_a_decision_with_its_stage_and_reason(kb, text, replies, stage) -> None:
    decision = scripted_assistant(kb, replies).handle(ChatMessage(text=text))
    assert not decision.answered and decision.answer == "" and decision.stage == stage
    assert decision.records[-1].stage == stage and not decision.records[-1].passed and decision.reason


def test_retrieval_only_ablation_skips_the_model_stages(kb) -> None:
    decision = scripted_assistant(kb, ["Reset it at the portal [1]."], full=False).handle("reset VPN password")
    assert decision.answered and [r.stage for r in decision.records] == ["retrieve", "answer"]


# ---- groups ----------------------------------------------------------------------------------------
def test_rate_limit_per_group_with_a_window() -> None:
    now = [0.0]
    groups = Groups(rate=2, per_s=10, clock=lambda: now[0])
    assert groups.take("a") is None and groups.take("a") is None
    refused = groups.take("a")
    assert refused is not None and "rate limit" in refused and "limit 2" in refused
    assert groups.take("b") is None  # another group has its own budget
    now[0] = 10.0
    assert groups.take("a") is None


def test_groups_are_thread_safe_and_keep_their_own_history() -> None:
    groups = Groups(history=1000, rate=10**6)

    def chat(group: str) -> None:
        for i in range(200):
            groups.remember(group, "s", f"{group}-{i}")
            assert groups.take(group) is None

    threads = [threading.Thread(target=chat, args=(f"g{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(8):
        assert [text for _, text in groups.history(f"g{n}")] == [f"g{n}-{i}" for i in range(200)]


# ---- tuning ----------------------------------------------------------------------------------------
def brute_force(rows: list[Row]) -> float:
    """The best F1 over every combination of thresholds that can change a decision (coverage on the tuner's steps)."""
    best = 0.0
    cuts = sorted({r.retrieval for r in rows})
    for tq, tv, tr, tc in itertools.product(range(11), range(11), cuts, COVERAGE_STEPS):
        best = max(best, f1_of([r.question >= tq and r.relevance >= tv and r.retrieval >= tr and r.coverage >= tc
                                for r in rows], rows))
    return best


def f1_of(accepted: list[bool], rows: list[Row]) -> float:
    tp = sum(a and r.good for a, r in zip(accepted, rows))
    fp = sum(a and not r.good for a, r in zip(accepted, rows))
    fn = sum(not a and r.good for a, r in zip(accepted, rows))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def apply(rows: list[Row], q: float, r: float, v: float, c: float) -> float:
    from hanlin.plugins.tools.kb_index import accepts

    return f1_of([x.question >= q and x.relevance >= v and accepts(x.retrieval, r) and x.coverage >= c for x in rows],
                 rows)


@pytest.mark.parametrize("seed", range(6))
def test_tuned_thresholds_equal_a_brute_force_search(seed) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(14):
        good = i % 2 == 0
        rows.append(Row(f"m{i}", good, rng.randint(3, 10) if good else rng.randint(0, 8),
                        round(rng.uniform(0.3, 0.9) if good else rng.uniform(0.0, 0.6), 3),
                        rng.randint(2, 10) if good else rng.randint(0, 7),
                        coverage=round(rng.uniform(0.2, 1.0) if good else rng.uniform(0.0, 0.5), 2)))
    tuned = search(rows)
    best = brute_force(rows)
    assert tuned.f1 == pytest.approx(best)
    # the thresholds as written (retrieval with its margin) give exactly that F1 on the labelled messages
    assert apply(rows, tuned.question, tuned.written, tuned.relevance, tuned.coverage) == pytest.approx(best)


def test_tune_scores_each_labelled_message_once_per_stage(kb) -> None:
    """`hanlin assistant tune` scores: the model's two scores, the best passage's and the question's coverage."""
    from hanlin.plugins.apps.assistant.tune import score_rows

    good, bad = "how do I reset my VPN password?", "does the VPN support IPv6 tunnels?"
    rows = score_rows(replay_model(), kb, [good], [bad])
    assert [(r.text, r.good, r.question, r.relevance) for r in rows] == [(good, True, 9, 9), (bad, False, 7, 8)]
    assert rows[0].coverage > 0.9 > 0.3 > rows[1].coverage and rows[0].retrieval > rows[1].retrieval


def test_tune_reads_labelled_files_with_clear_errors(tmp_path) -> None:
    from hanlin.errors import ConfigurationError
    from hanlin.plugins.apps.assistant.tune import read_messages

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ConfigurationError, match="line 2 .* not valid JSON"):
        read_messages(bad, False)
    bad.write_text('{"txt": "typo"}\n')
    with pytest.raises(ConfigurationError, match="line 1 .* needs a non-empty string 'text'"):
        read_messages(bad, False)


# ---- the server ------------------------------------------------------------------------------------
def routed_model():
    """Scores 9 everywhere, answers from passage [1]; a rewrite prompt is answered with the history it saw."""
    def reply(messages, params):
        if params.constraint is not None and params.constraint.json_schema == SCORE_SCHEMA:
            return score(9)
        last = messages[-1].content
        if last.startswith("Earlier messages:"):
            return last.split("\n\nLast message:")[0].replace("\n", " | ")
        return json.dumps({"source": 1, "answer": "Reset it at the self-service portal."})
    return ScriptedModel(reply)


@pytest.fixture()
def server(kb):
    from hanlin.plugins.apps.assistant.server import create_assistant_app

    assistant = Assistant(routed_model(), kb, thresholds=Thresholds(retrieval=0.5), rewrite=True,
                          groups=Groups(rate=3, per_s=60))
    with serving(create_assistant_app(assistant)) as url:
        yield url, assistant


def test_webhook_answers_with_the_decision(server) -> None:
    url, _ = server
    got = httpx.post(f"{url}/v1/assistant/webhook", json={"group": "g1", "sender": "ann",
                                                          "text": "how do I reset my VPN password?"})
    body = got.json()
    assert got.status_code == 200, body
    assert body["answered"] and body["citations"] == [1]
    assert body["passages"][0]["source"].startswith("vpn.md") and body["records"][-1]["stage"] == "check"


@pytest.mark.parametrize(("raw", "what"), [(b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
                                           (b'{"group": "g", "txt": "typo"}', "text")])
def test_webhook_malformed_input_is_400_in_openai_shape(server, raw, what) -> None:
    url, _ = server
    got = httpx.post(f"{url}/v1/assistant/webhook", content=raw, headers={"content-type": "application/json"})
    assert got.status_code == 400
    error = got.json()["error"]
    assert what in error["message"] and error["type"] == "invalid_request_error"


def test_a_burst_beyond_the_rate_limit_gets_silence_with_the_reason(server) -> None:
    url, _ = server
    decisions = [httpx.post(f"{url}/v1/assistant/webhook", json={"group": "busy", "text": f"how do I reset my VPN "
                                                                 f"password, try {i}?"}).json() for i in range(5)]
    assert [d["answered"] for d in decisions] == [True, True, True, False, False]
    assert decisions[3]["stage"] == "rate_limit" and "limit 3" in decisions[3]["reason"]
    other = httpx.post(f"{url}/v1/assistant/webhook", json={"group": "calm", "text": "how do I reset my VPN password?"})
    assert other.json()["answered"]


def test_concurrent_groups_do_not_share_history(server) -> None:
    url, assistant = server

    def talk(group: str) -> None:
        with httpx.Client() as client:
            client.post(f"{url}/v1/assistant/webhook", json={"group": group, "sender": group,
                                                             "text": f"my {group} VPN password expired"})
            client.post(f"{url}/v1/assistant/webhook", json={"group": group, "sender": group,
                                                             "text": "how do I reset it?"})

    threads = [threading.Thread(target=talk, args=(f"team{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(3):
        history = assistant.groups.history(f"team{n}")
        assert {sender for sender, _ in history} <= {f"team{n}", "assistant"}
        assert all(f"team{m}" not in text for m in range(3) if m != n for _, text in history)
    rewrites = [m[-1].content for m, p in assistant.model.calls if m[-1].content.startswith("Earlier messages:")]
    assert len(rewrites) == 3
    for prompt in rewrites:
        groups_seen = {g for g in ("team0", "team1", "team2") if g in prompt}
        assert len(groups_seen) == 1


def test_openai_route_silence_is_an_empty_reply_with_the_reason(server) -> None:
    url, _ = server
    got = httpx.post(f"{url}/v1/chat/completions", json={"model": "hanlin-assistant", "user": "g9", "messages": [
        {"role": "user", "content": "what is the weather in Paris today?"}]}).json()
    assert got["choices"][0]["message"]["content"] == ""
    assert got["hanlin_decision"]["answered"] is False and got["hanlin_decision"]["stage"] == "retrieve"
    answered = httpx.post(f"{url}/v1/chat/completions", json={"model": "hanlin-assistant", "messages": [
        {"role": "user", "content": "how do I reset my VPN password?"}]}).json()
    assert "[1]" in answered["choices"][0]["message"]["content"] and answered["hanlin_decision"]["citations"] == [1]
    wrong = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"


def test_openai_client_streams_a_checked_answer_and_a_silence(server) -> None:
    """stream=true through the official client: the answer arrives as chunks, the last one carries the decision;
    silence is a stream with no content. The reply is decided whole first, so nothing unchecked is ever sent."""
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    def ask(text: str, group: str) -> tuple[str, dict]:
        chunks = list(client.chat.completions.create(model="hanlin-assistant", user=group, stream=True,
                                                     messages=[{"role": "user", "content": text}]))
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "stop"
        return content, chunks[-1].model_extra["hanlin_decision"]

    content, decision = ask("how do I reset my VPN password?", "s1")
    assert content == "Reset it at the self-service portal [1]." and decision["answered"] and decision["citations"] == [1]
    content, decision = ask("what is the weather in Paris today?", "s2")
    assert content == "" and not decision["answered"] and decision["stage"] == "retrieve"


# ---- the evaluation --------------------------------------------------------------------------------
REPLAY = {  # message -> (question score, relevance score, answer)
    "how do I reset my VPN password?": (9, 9, "Reset it at the portal."),
    "what toner does the second-floor printer take?": (8, 3, "It takes HP 58A toner cartridges."),
    "does the VPN support IPv6 tunnels?": (7, 8, "Yes, the VPN supports IPv6 tunnels since 2021."),
    "printer on fire lol": (2, 6, "Call the fire brigade."),
    "what is the weather in Paris today?": (6, 1, "Sunny."),
    "ok": (0, 0, ""),
}


def replay_model() -> ScriptedModel:
    def reply(messages, params):
        last = messages[-1].content
        text = next(t for t in REPLAY if t in last)
        question, relevance, answer = REPLAY[text]
        if params.constraint is not None and params.constraint.json_schema == SCORE_SCHEMA:
            return score(question if last.startswith("Message:") else relevance)
        return json.dumps({"source": 1, "answer": answer})
    return ScriptedModel(reply)


@pytest.mark.parametrize("full", [True, False])
def test_replayed_decisions_equal_the_pipeline_under_any_thresholds(kb, full) -> None:
    """The evaluation asks the model once per message and replays every threshold: exact only if no stage's output
    depends on a threshold. Checked against the real pipeline on a grid of thresholds."""
    from hanlin.plugins.apps.assistant import replay

    model = replay_model()
    probes = replay.probe(model, kb, [(t, True) for t in REPLAY], floor=replay.OPEN)
    asked = len(model.calls)
    grid = [Thresholds(question=q, relevance=r, retrieval=v, support=s, coverage=c) for q in (0, 7, 9)
            for r in (0, 6) for v in (0.0, 0.5, 2.0) for s in (0.0, 0.5) for c in (0.0, 0.6)]
    decided = set()
    for t in grid:
        assistant = Assistant(model, kb, thresholds=t, full=full, groups=Groups(rate=10**6))
        for text, p in zip(REPLAY, probes):
            real = assistant.handle(ChatMessage(group=text, text=text))
            answered, why = replay.decide(p, t, full)
            assert (answered, why.split(":")[0]) == (real.answered, real.stage), (t, text, why, real.reason)
            assert (p.answer if answered else "") == real.answer
            decided.add((answered, real.stage))
    assert asked == 3 * 5 + 1  # one pass: three calls a message past the length gate, the answer for "ok" (the
    # retrieval-only ablation answers it; the full pipeline never asks its question score)
    assert len(decided) >= (5 if full else 3)  # the grid reaches every stage's refusal, so the replay is tested
    if full:  # and the coverage test, on a message whose topic is in the knowledge base but not its words (IPv6)
        assert any("coverage" in replay.decide(p, t, True)[1] for p in probes for t in grid)


def test_a_kept_model_pass_is_reused_for_the_same_model_and_messages_only(kb, tmp_path) -> None:
    """The evaluation's model pass takes ~40 minutes on the default model: kept in a file, thresholds, the check and
    the coverage can change and be measured again without it, and added messages are asked alone; another model, a
    relabelled message, or a message kept unasked that a lower floor now reaches are asked again."""
    from hanlin.plugins.apps.assistant import replay

    asked = [(t, n % 2 == 0) for n, t in enumerate(REPLAY)]
    probes = replay.probe(replay_model(), kb, asked, floor=replay.OPEN)
    path = tmp_path / "probes.jsonl"
    replay.save(path, probes[:-1], asked[:-1], "scripted")
    again = replay.load(path, asked, "scripted", Retrieve(kb))
    assert again[:-1] == probes[:-1] and again[-1] is None  # all comes back; the message not kept is to be asked
    assert replay.load(path, asked, "another-model", Retrieve(kb)) == [None] * len(asked)
    relabelled = replay.load(path, [(t, not g) for t, g in asked], "scripted", Retrieve(kb))
    assert relabelled == [None] * len(asked)
    assert replay.load(tmp_path / "none.jsonl", asked, "scripted", Retrieve(kb)) == [None] * len(asked)
    low = replay.probe(replay_model(), kb, asked[:1], floor=10.0)  # under the floor: kept without asking the model
    replay.save(path, low, asked[:1], "scripted")
    assert replay.load(path, asked[:1], "scripted", Retrieve(kb), floor=10.0)[0] == low[0]
    assert replay.load(path, asked[:1], "scripted", Retrieve(kb), floor=0.0) == [None]  # the floor reaches it now


def test_the_labelled_messages_are_a_sound_evaluation_set() -> None:
    """Unique ids, the three kinds in numbers, and each answerable message's answer in the document it names."""
    from hanlin.plugins.apps.assistant.evaluation import DATA, PACKAGES
    from hanlin.plugins.apps.research.corpus import package_documents

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 100 and len({r["id"] for r in rows}) == len(rows) == len({r["text"] for r in rows})
    kinds = [r["kind"] for r in rows]
    assert min(kinds.count(k) for k in ("answerable", "unanswerable", "chatter")) >= 30
    docs = {name.lower(): " ".join(text.lower().split()) for name, text in package_documents(PACKAGES).items()}
    for r in rows:
        if r["kind"] == "answerable":
            assert any(a.lower() in docs[r["source"]] for a in r["answer"]), r["id"]
        else:
            assert "answer" not in r and "source" not in r, r["id"]


def test_the_evaluation_tunes_each_fold_on_the_other(kb) -> None:
    """Held out: odd lines are decided under thresholds tuned on even lines and vice versa."""
    from hanlin.plugins.apps.assistant.evaluation import AssistantDataset
    from hanlin.plugins.evaluators.base import EvalItem

    items = [EvalItem(id=f"m{n}", question="q", answer="", group="chatter", line=n) for n in (1, 2, 3)]
    held, pooled = AssistantDataset(), AssistantDataset(tuning="all")
    assert [held.fold(i) for i in items] == [1, 0, 1] and {pooled.fold(i) for i in items} == {-1}
    assert [held.trains(i, 1) for i in items] == [False, True, False]  # fold 1 is tuned on even lines only
    assert all(pooled.trains(i, -1) for i in items)
    with pytest.raises(ConfigurationError, match="option tuning is 'heldout'"):
        AssistantDataset(tuning="in-sample")


def test_the_tuner_never_accepts_a_message_the_check_refused() -> None:
    rows = [Row("a", True, 9, 1.0, 9, checked=True), Row("b", True, 9, 0.9, 9, checked=False),
            Row("c", False, 9, 0.8, 9, checked=True)]
    tuned = search(rows)
    assert (tuned.precision, tuned.recall) == (1.0, 0.5)  # b cannot be won back by any threshold
