"""Stage: refuse to send an answer that says it does not know, cites nothing or a passage it was not given, or
touches a banned topic."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from hanlin.plugins.apps.assistant.records import Passage, StageRecord

UNSURE = ("i don't know", "i do not know", "i'm not sure", "i am not sure", "not mentioned", "no information",
          "does not contain", "doesn't contain", "do not contain", "cannot answer", "can't answer", "not provided",
          "unable to answer", "not specified")
CITATION = re.compile(r"\[(\d+)\]")


def citations(text: str) -> list[int]:
    return sorted({int(n) for n in CITATION.findall(text)})


@dataclass(slots=True)
class Check:
    banned: Sequence[str] = field(default_factory=tuple)

    def run(self, answer: str, passages: list[Passage]) -> StageRecord:
        lowered = answer.lower()
        unsure = next((p for p in UNSURE if p in lowered.replace("’", "'")), None)
        if unsure:
            return StageRecord(stage="check", passed=False, reason=f"the answer admits it does not know ({unsure!r})")
        cited = citations(answer)
        given = {p.number for p in passages}
        if not cited:
            return StageRecord(stage="check", passed=False, reason="the answer cites no passage ([n])")
        wrong = [n for n in cited if n not in given]
        if wrong:
            return StageRecord(stage="check", passed=False, detail={"cited": cited},
                               reason=f"the answer cites passage(s) {wrong} it was not given (given {sorted(given)})")
        topic = next((b for b in self.banned if b.lower() in lowered), None)
        if topic:
            return StageRecord(stage="check", passed=False, reason=f"the answer touches the banned topic {topic!r}")
        return StageRecord(stage="check", passed=True, reason=f"answer cites {cited} of the given passages",
                           detail={"cited": cited})
