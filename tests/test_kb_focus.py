"""The lines of a found passage that answer the query: how text is cut into sentences and which are kept."""

from __future__ import annotations

import re

from hanlin.plugins.tools.kb_docs import Chunk
from hanlin.plugins.tools.kb_focus import best_sentences, query_parts, sentences

POLICY = """# Travel policy

- Hotels: at most 140 euros per night.
- Meals: at most 45 euros per day.

Trains are preferred over flights for any journey under 6 hours. Claims are
filed in the Ledgerly app within 30 days. Approval by Ms. Okafor e.g. above 3.5 days.
"""


def test_sentences_are_list_items_whole_and_paragraphs_cut_at_sentence_ends() -> None:
    assert sentences(POLICY) == [
        "Hotels: at most 140 euros per night.",
        "Meals: at most 45 euros per day.",
        "Trains are preferred over flights for any journey under 6 hours.",
        "Claims are filed in the Ledgerly app within 30 days.",  # joined across its line break
        "Approval by Ms. Okafor e.g. above 3.5 days.",  # no end after an abbreviation, a capital after it or not
    ]
    assert sentences("") == [] and sentences("# only a heading") == []


def overlap(query: str, texts: list[str]) -> list[float]:
    """Scores by shared words: enough to check the selection without a model."""
    wanted = set(query.lower().split())
    return [float(len(wanted & set(t.lower().replace(":", " ").split()))) for t in texts]


def test_lines_within_the_margin_of_the_best_are_kept_best_first_unless_too_many_are() -> None:
    chunks = [Chunk("policy.md", "Travel policy", POLICY), Chunk("office.md", "", "The office has 3 floors.")]
    hotel = best_sentences("hotels night", chunks, overlap, margin=0.0)
    assert [(s.text, s.where) for s in hotel] == [("Hotels: at most 140 euros per night.", "policy.md › Travel policy")]
    both = best_sentences("hotels meals per day night", chunks, overlap, margin=1.0)
    assert [s.text for s in both] == ["Hotels: at most 140 euros per night.", "Meals: at most 45 euros per day."]
    assert best_sentences("the", chunks, overlap, margin=100.0) == []  # every line alike: the section was asked
    assert len(best_sentences("the", chunks, overlap, margin=100.0, limit=6)) == 6
    assert best_sentences("x", [], overlap, margin=1.0) == []
    # each line is scored under its passage's heading, so a heading word counts for every line of it
    seen: list[str] = []
    best_sentences("q", chunks[:1], lambda q, texts: seen.extend(texts) or [0.0] * len(texts), margin=0.0)
    assert seen[0] == "Travel policy: Hotels: at most 140 euros per night."


def test_a_query_for_two_things_gets_the_best_line_of_each_side() -> None:
    """kb-09: "floors and desks per floor" showed only the desks line, 0.101 below it the floors line."""
    def words(query: str, texts: list[str]) -> list[float]:
        return overlap(re.sub(r"[^\w ]", "", query), [re.sub(r"[^\w ]", "", t) for t in texts])

    office = [Chunk("office.md", "", "The office has 3 floors. Each floor has 28 desks. Parking has 12 spaces.")]
    assert query_parts("how many floors and desks per floor?") == ["how many floors", "desks per floor"]
    both = best_sentences("how many floors and desks per floor?", office, words, margin=0.5)
    assert [s.text for s in both] == ["Each floor has 28 desks.", "The office has 3 floors."]
    assert [s.text for s in best_sentences("how many floors desks per floor?", office, words, margin=0.5)] == [
        "Each floor has 28 desks."]  # no "and": the margin alone decides
    assert [s.text for s in best_sentences("how many floors and desks per floor?", office, words, margin=0.2)] == [
        "Each floor has 28 desks."]  # a side's line further than twice the margin below the best stays out
    assert query_parts("floors and desks per floor") == []  # a side of one word
    assert query_parts("hotels and meals for 3 nights and 4 days") == []  # more than two sides: a task, not a pair
