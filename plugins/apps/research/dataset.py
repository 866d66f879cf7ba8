"""``hanlin eval -d research``: the multi-hop question set, `hanlin research` beside a single ReAct agent.

Both systems search the same index with the same numbered ``search`` tool and are scored the same way (see
``evaluate.py``): answer correctness (one phrase of every answer group in the answer), citation validity (each
shown reference's passage is verbatim in the document it names) and recall of the documents the question needs.
Metrics are named ``research_*`` and ``react_*`` so one table shows the two side by side, in the same run.
Each plan is seeded with a constrained split of the question, as `hanlin research` does by default;
``-d research:unsplit`` leaves the planner agent to plan from scratch (``decompose=False``; ``research:decompose``
is the default, named). Options
of the factory (Python): ``search`` (``packages`` by default, or ``local:DIR``), ``max_parallel``,
``max_nodes``, ``protocol`` (the searchers' protocol, ``react`` by default), ``decompose`` (seed the plan with a
constrained split), ``systems`` (``research,react``).
"""

from __future__ import annotations

import time
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.evaluators.base import Dataset, EvalItem

SYSTEMS = ("research", "react")
SCORES = ("correct", "citation_valid", "citation_support", "doc_recall", "wall_s")


class ResearchDataset(Dataset):
    name = "research"
    kind = "research"  # type: ignore[assignment]  # runs itself (evaluate), not the generation runner
    description = "Multi-hop questions over the installed packages' docs: hanlin research vs a single ReAct agent"
    supports_fewshot = False
    fewshot_source = "none"

    def __init__(self, subset: str | None = None, search: str = "packages", max_parallel: int | str = 1,
                 max_nodes: int | str = 4, systems: str = "research,react", protocol: str = "react",
                 decompose: bool | str = True) -> None:
        super().__init__()
        if subset not in (None, "decompose", "unsplit"):
            raise ConfigurationError(f"dataset 'research' has the variants research:unsplit (the planner agent plans "
                                     f"from scratch) and research:decompose (the default: the plan seeded by a "
                                     f"constrained split of the question); got {subset!r}")
        chosen = tuple(s.strip() for s in systems.split(",") if s.strip())
        unknown = [s for s in chosen if s not in SYSTEMS]
        if unknown or not chosen:
            raise ConfigurationError(f"systems={systems!r}: choose from {', '.join(SYSTEMS)} (comma-separated)")
        self.search, self.systems, self.protocol = search, chosen, protocol
        self.decompose = decompose if isinstance(decompose, bool) else decompose.lower() in ("1", "true", "yes")
        self.decompose = (self.decompose or subset == "decompose") and subset != "unsplit"
        try:
            self.max_parallel, self.max_nodes = int(max_parallel), int(max_nodes)
        except ValueError:
            raise ConfigurationError("max_parallel and max_nodes must be integers") from None

    def load(self) -> list[EvalItem]:
        from hanlin.plugins.apps.research.evaluate import load_questions

        self.source = "hanlin: plugins/apps/research/data/multihop.jsonl over the installed packages' METADATA"
        return [EvalItem(id=q["id"], question=q["question"], answer=" | ".join("/".join(g) for g in q["answers"]),
                         extra={"row": q}, line=n) for n, q in enumerate(load_questions(), 1)]

    def run_system(self, system: str, model: Any, item: EvalItem) -> dict[str, Any]:
        from hanlin.plugins.apps.research.evaluate import run_react, run_research, score

        row = item.extra["row"]
        if system == "research":
            run = run_research(model, row, self.search, max_parallel=self.max_parallel, max_nodes=self.max_nodes,
                               searcher_protocol=self.protocol, decompose=self.decompose)
        else:
            run = run_react(model, row, self.search)
        return {"system": system, "id": item.id, **score(row, run["answer"], run["references"]),
                "wall_s": run["wall_s"], "status": run["status"], "answer": run["answer"],
                "references": [r.model_dump() for r in run["references"]]}

    def evaluate(self, model: Any, settings: Any, progress: Any = None) -> Any:
        from hanlin.plugins.evaluators.metrics import mean_with_stderr
        from hanlin.plugins.evaluators.results import DatasetResult, Prediction

        start = time.perf_counter()
        limit = getattr(settings, "limit", None)
        items = self.items()[:limit] if limit else self.items()
        rows = [self.run_system(system, model, item) for system in self.systems for item in items]
        metrics = {}
        for system in self.systems:
            mine = [r for r in rows if r["system"] == system]
            for key in SCORES:
                metrics[f"{system}_{key}"] = mean_with_stderr([float(r[key]) for r in mine])
        predictions = [Prediction(id=r["id"], sample=self.systems.index(r["system"]), group=r["system"],
                                  gold=next(i.answer for i in items if i.id == r["id"]), output=r["answer"],
                                  extracted=r["answer"], correct=bool(r["correct"]),
                                  detail=f"{r['system']}: {r['status']}; citation_valid {r['citation_valid']:.2f}, "
                                         f"citation_support {r['citation_support']:.2f}, "
                                         f"doc_recall {r['doc_recall']:.2f}, {r['wall_s']:.1f} s; references: "
                                         + "; ".join(f"[{x['number']}] {x['url']}" for x in r["references"]))
                       for r in rows]
        return DatasetResult(dataset=self.name, kind="research", model=model.name, metrics=metrics, groups={},
                             predictions=predictions, prompts=[], shots=0, model_calls=0, cached=0,
                             elapsed_s=time.perf_counter() - start,
                             info={"search": self.search, "max_parallel": self.max_parallel,
                                   "max_nodes": self.max_nodes, "searcher_protocol": self.protocol,
                                   "decompose": self.decompose},
                             notes=[f"{len(items)} questions; search {self.search}; systems {', '.join(self.systems)} "
                                    "(same search tool and index, same scoring)"])
