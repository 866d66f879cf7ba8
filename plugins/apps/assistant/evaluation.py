"""``hanlin eval -d assistant``: the answer-or-stay-silent decision on 198 labelled chat messages.

The corpus is the long descriptions (METADATA) of seven installed packages (httpx, requests, uvicorn, pluggy,
pytest, click, jinja2), written to a cache folder by the research app's corpus builder and indexed by the
knowledge base. Messages are answerable (covered by those docs: a source file and answer keywords), unanswerable
(same topics, not in the docs) or chatter. Metrics: decision precision / recall / F1 (positive = answered, gold =
answerable), answered chatter, answer correctness on the answered answerable ones (a keyword is in the answer),
citation precision (cited passages from the right document), and the same for two ablations: the retrieval
threshold alone (``retrieval_only_*``: answers whatever passes it), and the retrieval threshold with the question's
coverage but no model score or check (``no_model_*``).

The thresholds are tuned on labelled messages and applied held out: the messages are split in two folds
(alternate lines), and each message is decided under the thresholds tuned on the other fold, as a team tuning on
some labelled messages then meets new ones. Every message is asked the model once (``replay.py``) and the decisions
under any thresholds are replayed: the full pipeline's question, retrieval and relevance thresholds are tuned
together with the check's verdicts (``tune.search``), the ablation's retrieval threshold alone (``kb_tuning``).
From Python, ``AssistantDataset(probes=PATH)`` keeps the model pass in a file (and reuses it when it matches the
model and messages), ``AssistantDataset(tuning="all")`` tunes on all messages (in sample) and
``AssistantDataset(thresholds=PATH)`` uses a tuned ``assistant.json`` as it is (``hanlin eval`` passes a subset
only: ``-d assistant:chatter``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.evaluators.base import Dataset, EvalItem

PACKAGES = ["httpx", "requests", "uvicorn", "pluggy", "pytest", "click", "jinja2"]
DATA = Path(__file__).parent / "data" / "assistant_eval.jsonl"
KINDS = ("answerable", "unanswerable", "chatter")
# full: every stage; retrieval_only: the best passage's score alone (the ablation baseline); no_model: the retrieval
# score and the question's coverage, no model score or check (what the model stages add beyond the lexical test)
VARIANTS = ("full", "retrieval_only", "no_model")


def prf(pairs: list[tuple[bool, bool]]) -> dict[str, float]:
    """(gold, predicted) -> precision, recall, F1 of 'answered'."""
    tp = sum(g and p for g, p in pairs)
    fp = sum(p and not g for g, p in pairs)
    fn = sum(g and not p for g, p in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def corpus_index(cache: Path | None = None) -> Path:
    """Build (once) the package-docs corpus and its index; returns the index folder."""
    from hanlin.plugins.apps.research.corpus import package_documents
    from hanlin.plugins.tools.kb_index import KnowledgeIndex

    docs = package_documents(PACKAGES)
    missing = sorted({f"{p}.md" for p in PACKAGES} - {n.lower() for n in docs})
    if missing:
        raise ConfigurationError(f"the assistant evaluation needs these packages installed: {missing}")
    digest = hashlib.sha256(json.dumps(docs, sort_keys=True).encode()).hexdigest()[:12]
    root = (cache or Path.home() / ".cache" / "hanlin" / "assistant_eval") / digest
    folder, index = root / "docs", root / "index"
    if not (index / "meta.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in docs.items():
            (folder / name.lower()).write_text(text, encoding="utf-8")
        KnowledgeIndex.build(folder).save(index)
    return index


class AssistantDataset(Dataset):
    name = "assistant"
    kind = "assistant"  # type: ignore[assignment]  # runs itself (evaluate), not the generation runner
    description = "Knowledge assistant: answer-or-silence decision on 198 chat messages over package docs"
    supports_fewshot = False
    fewshot_source = "none"

    def __init__(self, subset: str | None = None, thresholds: str | None = None, cache: str | None = None,
                 tuning: str = "heldout", probes: str | None = None) -> None:
        super().__init__()
        if subset not in (None, *KINDS):
            raise ConfigurationError(f"dataset 'assistant' subsets are {', '.join(KINDS)}; got {subset!r}")
        if tuning not in ("heldout", "all"):
            raise ConfigurationError(f"dataset 'assistant' option tuning is 'heldout' (two folds, each message "
                                     f"decided under the threshold tuned on the other) or 'all'; got {tuning!r}")
        self.subset, self.thresholds_path, self.cache = subset, thresholds, Path(cache) if cache else None
        self.tuning = tuning
        self.probes_path = Path(probes) if probes else None  # the model pass, kept: re-tune and re-decide without it

    def load(self) -> list[EvalItem]:
        self.source = f"hanlin: {DATA.name} over the METADATA of {', '.join(PACKAGES)}"
        items = []
        for line, raw in enumerate(DATA.read_text(encoding="utf-8").splitlines(), 1):
            row = json.loads(raw)
            if self.subset and row["kind"] != self.subset:
                continue
            items.append(EvalItem(id=row["id"], question=row["text"], answer="|".join(row.get("answer", [])),
                                  group=row["kind"], extra={"source": row.get("source", "")}, line=line))
        return items

    def select_interleaved(self, limit: int | None) -> list[EvalItem]:
        """The first ``limit`` items taking the kinds in turn, so a subset keeps the mix."""
        items = self.items()
        if not limit or limit >= len(items):
            return items
        by_kind = {k: [i for i in items if i.group == k] for k in KINDS}
        chosen: list[EvalItem] = []
        while len(chosen) < limit:
            for k in KINDS:
                if by_kind[k] and len(chosen) < limit:
                    chosen.append(by_kind[k].pop(0))
        return chosen

    def run(self, model: Any, limit: int | None = None, progress: Any = None) -> dict[str, Any]:
        """One model pass over the selected messages (``replay.probe``), then each variant decided by replay under
        thresholds tuned on the other fold (or all messages, or the given file): per-message rows and the metrics."""
        from hanlin.plugins.apps.assistant import replay
        from hanlin.plugins.apps.assistant.pipeline import open_kb
        from hanlin.plugins.apps.assistant.retrieve import Retrieve
        from hanlin.plugins.apps.assistant.settings import load_thresholds

        kb = open_kb(corpus_index(self.cache))
        items = self.select_interleaved(limit)
        scores = [kb.index.search(i.question, 1)[0].score for i in items]
        goods = [i.group == "answerable" for i in items]
        folds = sorted({self.fold(i) for i in items})
        floor = min(replay.lowest_threshold([s for s, i in zip(scores, items) if self.trains(i, f)],
                                            [g for g, i in zip(goods, items) if self.trains(i, f)]) for f in folds)
        fixed = load_thresholds(Path(self.thresholds_path).parent) if self.thresholds_path else None
        if fixed is not None:
            floor = min(floor, fixed.retrieval) if fixed.retrieval is not None else replay.OPEN
        asked = [(i.question, g) for i, g in zip(items, goods)]
        kept = (replay.load(self.probes_path, asked, model.name, Retrieve(kb), floor) if self.probes_path
                else [None] * len(asked))
        missing = [n for n, p in enumerate(kept) if p is None]
        fresh = replay.probe(model, kb, [asked[n] for n in missing], floor,
                             progress=None if progress is None else (lambda n: progress("probe", n)))
        for n, p in zip(missing, fresh):
            kept[n] = p
        probes = [p for p in kept if p is not None]
        if self.probes_path and missing:
            replay.save(self.probes_path, probes, asked, model.name)
        chosen: dict[int, dict[str, Any]] = {}
        for f in folds:
            train = [(p, i.question) for p, i in zip(probes, items) if self.trains(i, f)]
            full = fixed or replay.tuned_full([p for p, _ in train], [t for _, t in train])
            only = fixed.retrieval if fixed is not None else replay.tuned_retrieval([p for p, _ in train])
            lexical = fixed or replay.tuned_without_model([p for p, _ in train], [t for _, t in train])
            chosen[f] = {"full": full, "retrieval_only": full.model_copy(update={"retrieval": only}),
                         "no_model": lexical}
        rows = []
        for variant in VARIANTS:
            for item, p in zip(items, probes):
                answered, why = replay.decide(p, chosen[self.fold(item)][variant], variant == "full",
                                              coverage=variant != "retrieval_only")
                answer = p.answer if answered else ""
                keys = [k.lower() for k in item.answer.split("|") if k]
                cited = [q for q in p.passages if f"[{q.number}]" in answer]
                rows.append({"variant": variant, "id": item.id, "kind": item.group, "text": item.question,
                             "answered": answered, "stage": why.split(":")[0], "reason": why.split(": ", 1)[1],
                             "answer": answer,
                             "correct": bool(answered and keys and any(k in answer.lower() for k in keys)),
                             "cited": len(cited),
                             "cited_right": sum(q.source.split(" ")[0] == item.extra["source"] for q in cited)})
        thresholds = {f: {v: t.model_dump() for v, t in c.items()} for f, c in chosen.items()}
        return {"rows": rows, "metrics": self.metrics(rows), "thresholds": thresholds, "messages": len(items),
                "asked": sum(p.asked for p in probes), "asked_now": sum(probes[n].asked for n in missing)}

    def fold(self, item: EvalItem) -> int:
        """The fold of ``item``: decided under thresholds tuned on the other fold (-1: one fold, in sample)."""
        return -1 if self.tuning == "all" else item.line % 2

    def trains(self, item: EvalItem, fold: int) -> bool:
        """Whether ``item``'s label tunes the thresholds that decide ``fold``."""
        return fold == -1 or self.fold(item) != fold

    @staticmethod
    def metrics(rows: list[Mapping[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for variant in VARIANTS:
            mine = [r for r in rows if r["variant"] == variant]
            if not mine:
                continue
            prefix = "" if variant == "full" else f"{variant}_"
            for k, v in prf([(r["kind"] == "answerable", r["answered"]) for r in mine]).items():
                out[f"{prefix}decision_{k}"] = v
            out[f"{prefix}answered_chatter"] = sum(r["answered"] for r in mine if r["kind"] == "chatter")
            out[f"{prefix}answered_unanswerable"] = sum(r["answered"] for r in mine if r["kind"] == "unanswerable")
            good = [r for r in mine if r["answered"] and r["kind"] == "answerable"]
            out[f"{prefix}correctness"] = sum(r["correct"] for r in good) / len(good) if good else 0.0
            cited = sum(r["cited"] for r in good)
            out[f"{prefix}citation_precision"] = sum(r["cited_right"] for r in good) / cited if cited else 0.0
        return out

    def evaluate(self, model: Any, settings: Any, progress: Any = None) -> Any:
        """What ``hanlin eval`` calls for this dataset: a DatasetResult with the metrics above."""
        from hanlin.plugins.evaluators.metrics import Score
        from hanlin.plugins.evaluators.results import DatasetResult, Prediction

        start = time.perf_counter()
        done = self.run(model, getattr(settings, "limit", None))
        nan = float("nan")
        n = done["messages"]
        metrics = {k: Score(float(v), nan, n) for k, v in done["metrics"].items()}
        predictions = [Prediction(id=r["id"], sample=VARIANTS.index(r["variant"]), group=r["kind"],
                                  gold="answer" if r["kind"] == "answerable" else "silence", output=r["answer"],
                                  extracted="answer" if r["answered"] else "silence",
                                  correct=r["answered"] == (r["kind"] == "answerable"),
                                  detail=f"{r['variant']}: {r['stage']}: {r['reason']}") for r in done["rows"]]
        return DatasetResult(dataset=self.name, kind="assistant", model=model.name, metrics=metrics, groups={},
                             predictions=predictions, prompts=[], shots=0, model_calls=0, cached=0,
                             elapsed_s=time.perf_counter() - start,
                             info={"thresholds": done["thresholds"], "asked_model": done["asked"]},
                             notes=[f"{n} messages ({done['asked']} asked the model, once each); "
                                    + self.tuning_note(done["thresholds"])])

    def tuning_note(self, chosen: Mapping[int, Mapping[str, Mapping[str, Any]]]) -> str:
        def show(t: Mapping[str, Any]) -> str:
            return (f"question {t['question']:g} / retrieval {t['retrieval']:.4f} / coverage {t['coverage']:g} / "
                    f"relevance {t['relevance']:g} / support {t['support']:g}")

        if self.thresholds_path:
            return f"thresholds from {self.thresholds_path}: {show(next(iter(chosen.values()))['full'])}"
        if -1 in chosen:
            return f"thresholds tuned on these messages, in sample: {show(chosen[-1]['full'])}"
        return ("thresholds held out: odd lines decided under those tuned on even lines "
                f"({show(chosen[1]['full'])}), even under odd ({show(chosen[0]['full'])})")
