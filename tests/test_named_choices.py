"""A required choice (an enum) the conversation never made withholds the call, and the call grammar offers only the
choices it names; every usual form of a value names it."""

from __future__ import annotations

import json

import pytest

from hanlin import Capabilities, GenerationParams, Message, ToolCall
from hanlin.runtimes.argument_grounding import Evidence, ground_call, ground_calls
from hanlin.runtimes.named_choices import guessed_choices, names_value, narrowed_tools, same_word
from hanlin.runtimes.tool_calls import FORMATS, plan_tools

LEAVE = {"type": "function", "function": {
    "name": "request_time_off", "description": "File a time-off request for an employee.",
    "parameters": {"type": "object", "properties": {
        "employee_id": {"type": "string"}, "start_date": {"type": "string"}, "end_date": {"type": "string"},
        "leave_type": {"type": "string", "enum": ["vacation", "sick", "parental", "unpaid"]}},
        "required": ["employee_id", "start_date", "end_date", "leave_type"]}}}
UNITS = ["millimeter", "centimeter", "meter", "kilometer", "inch", "foot", "yard", "mile"]
LENGTH = {"type": "function", "function": {
    "name": "convert_length", "description": "Convert a length between units.",
    "parameters": {"type": "object", "properties": {
        "value": {"type": "number"}, "from_unit": {"type": "string", "enum": UNITS},
        "to_unit": {"type": "string", "enum": UNITS}}, "required": ["value", "from_unit", "to_unit"]}}}


@pytest.mark.parametrize(("a", "b"), [
    ("meter", "metre"), ("kilometer", "kilometres"), ("kilometer", "km"), ("foot", "feet"), ("std", "standard"),
    ("swimming", "swim"), ("max", "maximum"), ("tablespoon", "tbsp"), ("liter", "litres"), ("pound", "lbs"),
    ("cup", "cups"), ("strawberry", "strawberries"), ("heating", "heat"),
    ("cycling", "cycle"), ("driving", "drive"), ("swimming", "swims"),
])
def test_the_usual_forms_of_a_word_are_that_word(a, b) -> None:
    assert same_word(a, b) and same_word(b, a)


@pytest.mark.parametrize(("a", "b"), [
    ("millimeter", "minutes"), ("meter", "hours"), ("vacation", "today"), ("gram", "grant"), ("ounce", "once"),
    ("sick", "six"),
])
def test_other_words_are_not(a, b) -> None:
    assert not same_word(a, b)


@pytest.mark.parametrize(("text", "value", "expected"), [
    ("The oven recipe says 350°F. What is that in Celsius?", "fahrenheit", True),
    ("Run 5km then 2 mi", "kilometer", True),
    ("It is 20 C outside", "celsius", True),  # a letter right after a number is a unit; anywhere else a word
    ("Is it a good day?", "acre", False),
    ("What's the standard deviation and the maximum of 4.2, 5.1?", "std", True),
    ("Make the office cooler: 21 degrees in cooling mode", "cool", True),
    ("Put the fluid oz on the label", "fluid_ounce", True),
    ("Convert 3 hours into minutes.", "millimeter", False),
    ("Fire employee E-2291 effective today.", "vacation", False),
    ("Send it to me at once", "ton", False),  # function words abbreviate nothing
    ("Plan a trip to Milan", "fluid_ounce", False),  # every word of a value has to be named
])
def test_a_value_is_named_in_any_usual_form(text, value, expected) -> None:
    assert names_value(Evidence.of([text]), value) is expected


def test_a_required_choice_the_request_never_made_is_a_guess() -> None:
    evidence = Evidence.of(["Fire employee E-2291 effective today."])
    params = LEAVE["function"]["parameters"]
    call = {"employee_id": "E-2291", "start_date": "2023-04-15", "end_date": "2023-04-20", "leave_type": "vacation"}
    assert guessed_choices(call, params, evidence) == [("leave_type", ["vacation", "sick", "parental", "unpaid"])]
    named = Evidence.of(["E-2291 is off sick from 2023-04-15 to 2023-04-20."])
    assert guessed_choices({**call, "leave_type": "sick"}, params, named) == []
    # an optional choice is the argument grounding's business (dropped when unnamed), and a one-value enum no choice
    optional = {**params, "required": ["employee_id"]}
    assert guessed_choices(call, optional, evidence) == []
    fixed = {"properties": {"kind": {"enum": ["vacation"]}}, "required": ["kind"]}
    assert guessed_choices({"kind": "vacation"}, fixed, evidence) == []


def test_an_optional_choice_stays_when_named_in_any_usual_form() -> None:
    # multiple-028: "How long does it take to cycle from the Rijksmuseum to Amsterdam Centraal?" -> "mode": "cycling"
    params = {"properties": {"origin": {"type": "string"}, "destination": {"type": "string"}, "mode": {
        "type": "string", "enum": ["driving", "walking", "cycling", "transit"]}}, "required": ["origin", "destination"]}
    evidence = Evidence.of(["How long does it take to cycle from the Rijksmuseum to Amsterdam Centraal?"])
    route = {"origin": "Rijksmuseum", "destination": "Amsterdam Centraal"}
    assert ground_call(ToolCall(name="get_route", arguments={**route, "mode": "cycling"}), params, evidence
                       ).arguments == {**route, "mode": "cycling"}
    assert ground_call(ToolCall(name="get_route", arguments={**route, "mode": "driving"}), params, evidence
                       ).arguments == route


def test_a_list_of_choices_is_named_item_by_item() -> None:
    measures = {"type": "string", "enum": ["mean", "median", "mode", "std", "min", "max"]}
    params = {"properties": {"numbers": {"type": "array"}, "measures": {"type": "array", "items": measures}},
              "required": ["numbers", "measures"]}
    evidence = Evidence.of(["What's the standard deviation and the maximum of 4.2, 5.1 and 3.9?"])
    assert guessed_choices({"numbers": [4.2, 5.1, 3.9], "measures": ["std", "max"]}, params, evidence) == []
    assert [n for n, _ in guessed_choices({"numbers": [4.2], "measures": ["std", "median"]}, params, evidence)] \
        == ["measures"]


def test_a_call_with_a_guessed_choice_is_withheld_with_the_choices_in_the_note() -> None:
    evidence = Evidence.of(["Convert 3 hours into minutes."])
    call = ToolCall(name="convert_length", arguments={"value": 3, "from_unit": "millimeter", "to_unit": "meter"})
    kept, notes = ground_calls([call], [LENGTH], evidence)
    assert kept == [] and notes == [
        'Not calling convert_length: the conversation does not name from_unit "millimeter" (one of millimeter, '
        'centimeter, meter, kilometer, inch, foot, yard or mile); nor to_unit "meter" (one of millimeter, '
        'centimeter, meter, kilometer, inch, foot, yard or mile).']
    # tool_choice required or named promises a call: nothing is withheld
    assert ground_calls([call], [LENGTH], evidence, withhold=False) == ([call], [])
    asked = ToolCall(name="convert_length", arguments={"value": 4810, "from_unit": "meter", "to_unit": "foot"})
    assert ground_calls([asked], [LENGTH], Evidence.of(["How many feet tall is a 4,810 metre mountain?"])) \
        == ([asked], [])


def test_no_right_call_of_the_function_calling_set_is_taken_for_a_guess() -> None:
    # every expected call of the 127 items that expect calls, with the first value the checker accepts: the units,
    # measures and activities those requests write as "kilometres", "metre", "feet", "standard deviation", "swim"
    from hanlin.plugins.evaluators.function_calling import shipped_path

    checked = 0
    for row in map(json.loads, shipped_path().read_text().splitlines()):
        schemas = {f["function"]["name"]: f["function"]["parameters"] for f in row["functions"]}
        evidence = Evidence.of([row["question"]])
        for expected in row["ground_truth"]:
            (name, accepted), = expected.items()
            arguments = {k: v[0] for k, v in accepted.items() if v and v[0] != ""}
            assert guessed_choices(arguments, schemas[name], evidence) == [], (row["id"], name, arguments)
            checked += any("enum" in json.dumps(s) for s in schemas[name]["properties"].values())
    assert checked >= 20  # the set does exercise choices


VOLUMES = ["milliliter", "liter", "teaspoon", "tablespoon", "cup", "fluid_ounce", "gallon"]
VOLUME = {"type": "function", "function": {
    "name": "convert_volume", "description": "Convert a volume between units.",
    "parameters": {"type": "object", "properties": {
        "value": {"type": "number"}, "from_unit": {"type": "string", "enum": VOLUMES},
        "to_unit": {"type": "string", "enum": VOLUMES}}, "required": ["value", "from_unit", "to_unit"]}}}
PLACES = {"type": "function", "function": {
    "name": "find_nearby", "description": "Places of a kind near a location.",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string"}, "place_type": {"type": "string", "enum": [
            "restaurant", "pharmacy", "gas_station", "atm", "hospital", "supermarket"]}},
        "required": ["location", "place_type"]}}}


def _choices(tool: dict, name: str) -> list[str]:
    return tool["function"]["parameters"]["properties"][name]["enum"]


def test_the_grammar_offers_only_the_choices_the_conversation_names() -> None:
    # multiple-013: asked to convert tablespoons into teaspoons, the default model wrote from_unit "milliliter"
    tools = [VOLUME, LENGTH]
    narrowed = narrowed_tools(tools, Evidence.of(["Convert 2 tablespoons into teaspoons."]))
    assert _choices(narrowed[0], "from_unit") == _choices(narrowed[0], "to_unit") == ["teaspoon", "tablespoon"]
    assert narrowed[1] is LENGTH and _choices(VOLUME, "from_unit") == VOLUMES  # nothing named: whole; input intact
    # "atm" is named only by its letters in "Amsterdam": a cut there would force a place nobody asked for
    amsterdam = Evidence.of(["How long does it take to cycle from the Rijksmuseum to Amsterdam Centraal?"])
    assert names_value(amsterdam, "atm") and narrowed_tools([PLACES], amsterdam) == [PLACES]
    assert _choices(narrowed_tools([PLACES], Evidence.of(["Any pharmacy near Plaza Mayor?"]))[0], "place_type") \
        == ["pharmacy"]


def test_the_plan_builds_its_call_grammar_from_the_named_choices() -> None:
    caps = Capabilities(constraints=frozenset({"grammar"}), native_tools=True)
    ask = [Message.user("Convert 2 tablespoons into teaspoons.")]
    plan = plan_tools(GenerationParams(tools=[VOLUME]), FORMATS["hermes"], caps, ask)
    for grammar in (plan.lazy_grammar, plan.more_calls):
        assert "tablespoon" in grammar and "milliliter" not in grammar
    assert plan.render_tools == [VOLUME]  # the prompt still shows every choice
    forced = plan_tools(GenerationParams(tools=[VOLUME], tool_choice="required"), FORMATS["hermes"], caps, ask)
    assert "milliliter" not in forced.grammar
    as_written = plan_tools(GenerationParams(tools=[VOLUME], ground_arguments=False), FORMATS["hermes"], caps, ask)
    assert "milliliter" in as_written.lazy_grammar
