"""Multi-hop questions over the package corpus, and the scores of a research run against a single ReAct agent.

``data/multihop.jsonl``: each question needs two package descriptions (``documents``); ``answers`` is a list of
groups, and an answer is right when it contains one phrase of every group (case-insensitive). Scores per run:
``correct``; ``citation_valid``: the share of shown references whose passage is verbatim in the document it names
(a run that cites nothing scores 0); ``citation_support``: the share of the answer's citations whose claim has at
least half of its words in the passages it cites (citation precision, on words); ``doc_recall``: the share of the
needed documents among the cited ones. The baseline is one ReAct agent with the same numbered ``search`` tool over
the same index, so both are scored the same way.
"""

from __future__ import annotations

import json
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from hanlin import Agent, ChatModel, GenerationParams
from hanlin.plugins.apps.research.citations import Ledger
from hanlin.plugins.apps.research.events import Reference
from hanlin.plugins.apps.research.pipeline import Research
from hanlin.plugins.apps.research.searcher import make_search_backend, numbered_search_tool

BASELINE_INSTRUCTIONS = """Answer the question by searching documents. The search results are numbered [1], [2], \
... Search as often as you need, then answer in one or two sentences, writing after each fact the number of the \
result it comes from in brackets, e.g. "Orbo makes the Zeta phone [2]." """


def load_questions() -> list[dict[str, Any]]:
    text = resources.files("hanlin.plugins.apps.research").joinpath("data/multihop.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


_STOP = frozenset("the and that for with which what from into its are was were has have this also".split())


def _squash(text: str) -> str:
    return " ".join(re.sub(r"[#*`>\[\]()_\-]", " ", text).split()).lower()


def passage_in_document(ref: Reference) -> bool:
    """The reference's passage (less the heading labels the index puts in it: "Heading: ...", and a passage that
    ends at a heading ends "... Heading:") is verbatim in its document."""
    path = Path(unquote(urlparse(ref.url).path))
    if not path.is_file():
        return False
    text = _squash(path.read_text(encoding="utf-8", errors="replace"))
    passage = ref.passage.strip("…").rstrip().removesuffix(":")
    fragments = [_squash(f) for f in re.split(r":\s|(?<=[.!?])\s", passage) if len(f.split()) >= 4]
    return bool(fragments) and all(f in text for f in fragments)


_CITED = re.compile(r"(?:\s*\[(\d+)\])+")
_TERM = re.compile(r"[a-z0-9][a-z0-9_.+/-]*[a-z0-9]|\d")


def _terms(text: str) -> set[str]:
    return {t for t in _TERM.findall(_squash(text)) if len(t) > 2 or t.isdigit()} - _STOP


def citation_support(answer: str, references: list[Reference], question: str = "") -> float:
    """The share of the answer's citations whose claim -- the text since the previous citation, or up to the next
    one for a citation written first -- has at least half of its words (3+ characters, or numbers) in the passages
    it cites: citation precision, checked on words. The question's words in a claim are left out when it has
    others ("the boilerplate tool Trafilatura uses is jusText [1]" claims jusText). A citation of a passage not in
    the reference list, or of a claim with no words ("[1]" alone), supports nothing; an answer that cites nothing
    scores 0."""
    passages = {r.number: _terms(r.passage) for r in references}
    asked = _terms(question)
    supported, total, start = 0, 0, 0
    groups = list(_CITED.finditer(answer))
    for index, group in enumerate(groups):
        claim = _terms(answer[start:group.start()])
        start = group.end()
        if not claim:  # a citation written before its claim ("[1] httpx: ..."): the text up to the next one
            claim = _terms(answer[start:groups[index + 1].start() if index + 1 < len(groups) else len(answer)])
        claim = (claim - asked) or claim
        for number in {int(d) for d in re.findall(r"\d+", group.group())}:
            held = passages.get(number, set())
            total += 1
            supported += bool(claim) and 2 * len(claim & held) >= len(claim)
    return supported / total if total else 0.0


def score(item: dict[str, Any], answer: str, references: list[Reference]) -> dict[str, float]:
    lowered = answer.lower()
    correct = all(any(alt.lower() in lowered for alt in group) for group in item["answers"])
    valid = sum(passage_in_document(r) for r in references) / len(references) if references else 0.0
    cited_docs = {Path(unquote(urlparse(r.url).path)).name for r in references}
    recall = len(cited_docs & set(item["documents"])) / len(item["documents"])
    return {"correct": float(correct), "citation_valid": valid,
            "citation_support": citation_support(answer, references, item.get("question", "")), "doc_recall": recall}


def run_research(model: ChatModel, item: dict[str, Any], search: str, **options: Any) -> dict[str, Any]:
    start = time.perf_counter()
    result = Research(model, search, **options).run(item["question"])
    return {"answer": result.answer, "references": result.references, "status": result.status,
            "error": result.error, "wall_s": time.perf_counter() - start}


def run_react(model: ChatModel, item: dict[str, Any], search: str, max_results: int = 3, max_steps: int = 6,
              max_tokens: int = 160) -> dict[str, Any]:
    start = time.perf_counter()
    ledger, local = Ledger(), {}
    tool = numbered_search_tool(make_search_backend(search), max_results, ledger, local)
    agent = Agent(model, [tool], protocol="react", instructions=BASELINE_INSTRUCTIONS, max_steps=max_steps,
                  params=GenerationParams(max_tokens=max_tokens, temperature=0.0), examples=False)
    result = agent.run(item["question"])
    text = result.output_text if result.status == "answered" else ""
    answer, _ = ledger.globalize(text, local)
    answer, refs, _ = ledger.finalize(answer)
    return {"answer": answer, "references": refs, "status": result.status, "wall_s": time.perf_counter() - start}


def evaluate(model: ChatModel, search: str, items: list[dict[str, Any]], systems: dict[str, Any],
             out: Path | None = None) -> dict[str, dict[str, float]]:
    """Run each system on each item; mean scores per system (and one JSON line per run in ``out``)."""
    table: dict[str, dict[str, float]] = {}
    fh = out.open("w", encoding="utf-8") if out else None
    try:
        for name, runner in systems.items():
            rows = []
            for item in items:
                run = runner(model, item, search)
                row = {**score(item, run["answer"], run["references"]), "wall_s": run["wall_s"]}
                rows.append(row)
                if fh:
                    fh.write(json.dumps({"system": name, "id": item["id"], **row, "status": run["status"],
                                         "error": run.get("error"), "answer": run["answer"],
                                         "references": [r.model_dump() for r in run["references"]]}) + "\n")
                    fh.flush()
            table[name] = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} | {"n": float(len(rows))}
    finally:
        if fh:
            fh.close()
    return table
