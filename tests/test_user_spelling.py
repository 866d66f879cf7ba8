"""A name the model respelled in a call goes back to the user's spelling; values the schema lists never change."""

from __future__ import annotations

import pytest

from hanlin import ToolCall
from hanlin.runtimes.argument_grounding import Evidence, ground_call
from hanlin.runtimes.user_spelling import as_user_spelled, one_edit

HOTELS = {"type": "object", "properties": {
    "city": {"type": "string"}, "check_in": {"type": "string"}, "guests": {"type": "integer"},
    "unit": {"type": "string", "enum": ["meter", "foot"]}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["city", "check_in"]}


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("lisboa", "lisbon", True), ("zurich", "zürich", True), ("colour", "color", True), ("form", "from", True),
    ("lisboa", "lisbonne", False), ("paris", "paris", False), ("munich", "münchen", False),
])
def test_one_edit(a, b, expected) -> None:
    assert one_edit(a, b) is expected


def test_a_respelled_name_goes_back_to_the_users_spelling() -> None:
    # multiple-027: "Find a hotel in Lisbon from 2025-07-10 to 2025-07-14 for 2 guests." -> find_hotels("Lisboa")
    evidence = Evidence.of(["Find a hotel in Lisbon from 2025-07-10 to 2025-07-14 for 2 guests."])
    call = ToolCall(name="find_hotels", arguments={"city": "Lisboa", "check_in": "2025-07-10", "guests": 2})
    assert ground_call(call, HOTELS, evidence).arguments == {"city": "Lisbon", "check_in": "2025-07-10", "guests": 2}
    assert as_user_spelled({"city": "LISBOA", "tags": ["lisboa", "sea view"]}, HOTELS, evidence) == {
        "city": "Lisbon", "tags": ["lisbon", "sea view"]}


def test_values_it_may_not_touch_stay_as_written() -> None:
    evidence = Evidence.of(["A 4,810 metre mountain near Lisbon or Lisbeth's place: how many feet?"])
    # a listed value: the schema's spelling is the one that works
    assert as_user_spelled({"unit": "meter"}, HOTELS, evidence) == {"unit": "meter"}
    # two words one edit away: no way to tell which was meant
    assert as_user_spelled({"city": "Malorca"}, HOTELS, Evidence.of(["Mallorca or Majorca?"])) == {"city": "Malorca"}
    # short words, other first letters, long free text, values the conversation has
    assert as_user_spelled({"city": "Rome"}, HOTELS, Evidence.of(["Roma"])) == {"city": "Rome"}
    assert as_user_spelled({"city": "Oporto"}, HOTELS, Evidence.of(["Porto"])) == {"city": "Oporto"}
    text = "please book the Lisboa hotel tonight"
    assert as_user_spelled({"city": text}, HOTELS, evidence) == {"city": text}
    assert as_user_spelled({"city": "Lisbon"}, HOTELS, evidence) == {"city": "Lisbon"}
