"""Optional call arguments that the conversation never mentions are dropped (runtimes/argument_grounding.py)."""

from __future__ import annotations

import pytest

from hanlin import Capabilities, GenerationParams, Message, ToolCall
from hanlin.runtimes.argument_grounding import Evidence, conversation_evidence, ground_call, ground_calls, invented
from hanlin.runtimes.tool_calls import FORMATS, plan_tools

FLIGHTS = {"type": "object", "required": ["origin", "destination"], "properties": {
    "origin": {"type": "string"}, "destination": {"type": "string"},
    "cabin": {"type": "string", "enum": ["economy", "premium_economy", "business"], "default": "economy"},
    "passengers": {"type": "integer"}, "max_price": {"type": "number"}, "flexible": {"type": "boolean"},
    "stops": {"type": "array", "items": {"type": "string"}}}}
SEARCH = {"type": "function", "function": {"name": "search_flights", "parameters": FLIGHTS}}


@pytest.mark.parametrize("text,value,expected", [
    ("Fly me to New York", "new york", True),  # case
    ("A premium economy seat, please", "premium_economy", True),  # underscores and hyphens are spaces
    ("An economy seat, please", "premium_economy", False),  # one word of two is not the value
    ("Two adults and three kids", "kids", True),
    ("Find hotels near the station", "hotel", True),  # a plural s either way
    ("What's the weather in Lima?", "fahrenheit", False),
    ("Email tom@example.org", "admin@example.com", False),
    ("Set the nursery to 22 degrees", "heat", False),
    ("Up to 1,500 dollars", 1500, True),
    ("Up to 1500 dollars", 1000, False),
    ("Leave an 18% tip", 18, True),
    ("Leave an 18% tip", 0.18, True),
    ("There are four of us", 4, True),
    ("Three coats, please", 3, True),
    ("Compounded quarterly", 4, True),
    ("Compounded semi-annually", 2, True),
    ("Compounded monthly", 4, False),
    ("Cost 3.2 million", 3.2, True),
    ("From (3,-2) to (-1, 4)", [3, -2], True),  # a minus sign is no hyphen
    ("Solve 2x^2 - 7x + 3 = 0", -7, True),
    ("Around 3-4 people", 4, True),
    ("Room 12", 1.2, False),
    ("Any text at all", True, True),  # a boolean is no word of the request: its name grounds it (below)
    ("Any text at all", False, True),
    ("Any text at all", None, False),  # nothing said is the default's to say
    ("Any text at all", "", False),
    ("Any text at all", [], False),
    ("Any text at all", {}, False),
    ("Stop in Rome and Vienna", ["Rome", "Vienna"], True),
    ("Stop in Rome and Vienna", ["Rome", "Paris"], False),
    ("Stop in Rome, 2 nights", {"city": "Rome", "nights": 2}, True),
    ("Stop in Rome, 2 nights", {"city": "Rome", "nights": 3}, False),
])
def test_what_a_conversation_mentions(text, value, expected) -> None:
    assert Evidence.of([text]).mentions(value) is expected


@pytest.mark.parametrize("text,name,expected", [
    ("Only the ones in stock, please", "in_stock_only", True),
    ("Business days between March 3 and March 28", "business_days_only", True),
    ("With the hourly breakdown", "includeHourly", True),  # camelCase
    ("The 3-day forecast for Seattle", "include_hourly", False),
    ("Is it raining in the city I include here?", "is_include", False),  # filler words ground nothing
])
def test_a_boolean_is_grounded_by_its_name(text, name, expected) -> None:
    evidence = Evidence.of([text])
    assert evidence.grounds(name, True) is expected and evidence.grounds(name, False) is expected
    assert evidence.grounds("days", 3) is evidence.mentions(3)  # other values by their value


def test_only_optional_arguments_without_grounding_go() -> None:
    evidence = Evidence.of(["Book a flight from Oslo to a city I will name later, 2 passengers"])
    call = ToolCall(name="search_flights", arguments={
        "origin": "Oslo", "destination": "Paris",  # required: stays even made up (the call would be invalid)
        "passengers": 2, "cabin": "economy",  # grounded; the schema's own default
        "max_price": 1000, "flexible": True, "stops": [], "seat": "12A"})  # made up, boolean, empty, not in schema
    grounded = ground_call(call, FLIGHTS, evidence)
    assert grounded.arguments == {"origin": "Oslo", "destination": "Paris", "passengers": 2, "cabin": "economy",
                                  "seat": "12A"}
    flexible = Evidence.of(["Oslo to Paris, my dates are flexible"])
    assert ground_call(call, FLIGHTS, flexible).arguments["flexible"] is True
    assert grounded.id == call.id and call.arguments["max_price"] == 1000  # a new call; the model's is untouched
    unknown = ToolCall(name="book_hotel", arguments={"max_price": 1000})
    assert ground_calls([unknown], [SEARCH], evidence) == ([unknown], [])  # not an offered tool: as it came


EMPLOYEE = {"type": "object", "required": ["employee_id"], "properties": {"employee_id": {"type": "string"}}}
HOTELS = {"type": "object", "required": ["city", "check_in"], "properties": {
    "city": {"type": "string"}, "check_in": {"type": "string"}}}


@pytest.mark.parametrize("text,parameters,arguments,expected", [
    ("Who is the current chancellor of Germany?", EMPLOYEE, {"employee_id": "12345"}, ["employee_id"]),
    ("Fire employee E-2291 effective today.", EMPLOYEE, {"employee_id": "E-2291"}, []),
    ("How is Microsoft doing?", EMPLOYEE, {"employee_id": "MSFT"}, []),  # words may be transformed: no digit
    ("Hire a taxi to my hotel.", HOTELS, {"city": "London", "check_in": "2023-01-01"}, ["city", "check_in"]),
    ("Hotels in London, please.", HOTELS, {"city": "London", "check_in": "2023-01-01"}, []),  # one is grounded
    ("What is the derivative of x^3?", {"type": "object", "required": ["number"], "properties": {}},
     {"number": 1234567890123456789}, ["number"]),
    ("Sum the squares up to ten", {"type": "object", "required": ["code"], "properties": {}},
     {"code": "print(sum(i*i for i in range(11)))"}, []),  # code is no id
    ("What is FastAPI built on?", {"type": "object", "required": ["id", "question"], "properties": {}},
     {"id": "n1", "question": "Which toolkit does it use?"}, []),  # free text the model writes itself
    ("Anything", {"type": "object", "properties": {"n": {"type": "integer"}}}, {"n": 7}, []),  # nothing required
])
def test_a_call_is_invented_when_every_required_value_is_made_up_and_one_is_a_number_or_an_id(
        text, parameters, arguments, expected) -> None:
    assert invented(ToolCall(name="f", arguments=arguments), parameters, Evidence.of([text])) == expected


def test_an_invented_call_is_withheld_with_a_note_of_what_it_needs() -> None:
    tools = [{"type": "function", "function": {"name": "get_employee_info", "parameters": EMPLOYEE}},
             {"type": "function", "function": {"name": "find_hotels", "parameters": HOTELS}}]
    calls = [ToolCall(name="get_employee_info", arguments={"employee_id": "12345"}),
             ToolCall(name="find_hotels", arguments={"city": "London", "check_in": "2023-01-01"}),
             ToolCall(name="find_hotels", arguments={"city": "Paris", "check_in": "2023-01-01"})]
    kept, notes = ground_calls(calls, tools, Evidence.of(["Hotels in Paris"]))
    assert kept == calls[2:]
    assert notes == ["To call get_employee_info I need employee_id, which the conversation does not give.",
                     "To call find_hotels I need city and check_in, which the conversation does not give."]
    # tool_choice required or named promises a call: the same calls are all returned
    caps = Capabilities(constraints=frozenset({"grammar"}), native_tools=True)
    for choice in ("required", {"type": "function", "function": {"name": "get_employee_info"}}):
        plan = plan_tools(GenerationParams(tools=tools, tool_choice=choice), FORMATS["hermes"], caps,
                          [Message.user("Hotels in Paris")])
        assert plan.settle("", calls[:1]) == ("", calls[:1], "")


def test_the_conversation_is_what_the_system_the_user_and_the_tools_said() -> None:
    messages = [Message.system("Today is 2025-03-08."), Message.user("Flights from Oslo to Rome"),
                Message.assistant("I will look for business class.",  # the model's own words ground nothing
                                  [ToolCall(id="c1", name="add_node", arguments={"id": "n7", "question": "Q?"})]),
                Message.tool("cheapest: 412 EUR", tool_call_id="c1", name="search_flights")]
    evidence = conversation_evidence(messages)
    assert evidence.mentions("2025-03-08") and evidence.mentions(412) and evidence.mentions("Rome")
    assert not evidence.mentions("business")
    assert evidence.mentions(["n7"])  # but its earlier calls do: a node id it chose, referred to later


def test_the_plan_grounds_the_reply_calls_unless_asked_not_to() -> None:
    ask = [Message.user("Flights from Oslo to Rome, please")]
    made_up = [ToolCall(name="search_flights", arguments={"origin": "Oslo", "destination": "Rome", "max_price": 300}),
               ToolCall(name="search_flights", arguments={"origin": "Oslo", "destination": "Rome", "max_price": 900})]
    caps = Capabilities(constraints=frozenset({"grammar"}), native_tools=True)
    plan = plan_tools(GenerationParams(tools=[SEARCH]), FORMATS["hermes"], caps, ask)
    # two calls that differed only in a made-up price are one call
    _, calls, note = plan.settle("", made_up)
    assert [c.arguments for c in calls] == [{"origin": "Oslo", "destination": "Rome"}] and note == ""
    as_written = plan_tools(GenerationParams(tools=[SEARCH], ground_arguments=False), FORMATS["hermes"], caps, ask)
    assert as_written.settle("", made_up) == ("", made_up, "")
    unheard = plan_tools(GenerationParams(tools=[SEARCH]), FORMATS["hermes"], caps)  # no conversation given
    assert unheard.settle("", made_up) == ("", made_up, "")


class CharTokenizer:
    """One token per character: enough to drive the HF runtimes' shared reply stream without a model."""

    def decode(self, ids, **_) -> str:
        return "".join(map(chr, ids))


def test_the_hf_runtimes_reply_stream_grounds_its_calls() -> None:
    from hanlin.runtimes.reply_stream import ReplyStream

    caps = Capabilities(constraints=frozenset({"grammar"}), native_tools=True)
    plan = plan_tools(GenerationParams(tools=[SEARCH]), FORMATS["hermes"], caps, [Message.user("Oslo to Rome")])
    reply = ReplyStream(CharTokenizer(), [], plan)
    text = ('<tool_call>\n{"name": "search_flights", "arguments": {"origin": "Oslo", "destination": "Rome", '
            '"max_price": 250}}\n</tool_call>')
    for ch in text:
        list(reply.add(ord(ch)))
    last = list(reply.close("stop", None))[-1]
    assert last.finish_reason == "tool_calls"
    assert [c.arguments for c in last.tool_calls] == [{"origin": "Oslo", "destination": "Rome"}]
    # an invented call is no call: the reply is the note, and it ends as text
    employee = {"type": "function", "function": {"name": "get_employee_info", "parameters": EMPLOYEE}}
    plan = plan_tools(GenerationParams(tools=[employee]), FORMATS["hermes"], caps, [Message.user("Who is Olaf?")])
    reply = ReplyStream(CharTokenizer(), [], plan)
    for ch in '<tool_call>\n{"name": "get_employee_info", "arguments": {"employee_id": "12345"}}\n</tool_call>':
        list(reply.add(ord(ch)))
    chunks = list(reply.close("stop", None))
    assert "".join(c.text for c in chunks) == ("To call get_employee_info I need employee_id, which the conversation "
                                               "does not give.")
    assert chunks[-1].finish_reason == "stop" and not chunks[-1].tool_calls
