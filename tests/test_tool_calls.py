"""Reading tool calls in every format small models write, the per-family format table, the stream filter and the
call grammar (no model: see test_tool_calls_model.py for the real runtimes)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hanlin import ConfigurationError, GenerationParams, Message, ToolCall
from hanlin.chat_model import Capabilities
from hanlin.runtimes.chat_format import render_chat
from hanlin.runtimes.tool_calls import (
    FORMATS,
    CallStreamFilter,
    call_grammar,
    call_trigger,
    detect_format,
    looks_like_call,
    normalize_tool_choice,
    parse_tool_calls,
    plan_tools,
    repeats_a_call,
    unique_calls,
    trigger_start,
)


def spec(name: str, **props: str) -> dict:
    required = list(props)
    return {"type": "function", "function": {"name": name, "description": f"{name} tool", "parameters": {
        "type": "object", "properties": {k: {"type": v} for k, v in props.items()}, "required": required}}}


TOOLS = [spec("calculate_roi", gain="number", cost="number"), spec("get_weather", city="string")]
ROI = '{"name": "calculate_roi", "arguments": {"gain": 120, "cost": 100}}'
WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def names(calls: list[ToolCall]) -> list[tuple[str, dict]]:
    return [(c.name, c.arguments) for c in calls]


ROI_CALL = ("calculate_roi", {"gain": 120, "cost": 100})
WEATHER_CALL = ("get_weather", {"city": "Paris"})


@pytest.mark.parametrize(("text", "expected_text", "expected"), [
    # hermes tags, one and several, with text around
    (f"<tool_call>\n{ROI}\n</tool_call>", "", [ROI_CALL]),
    (f"Let me compute.\n<tool_call>\n{ROI}\n</tool_call>\n<tool_call>{WEATHER}</tool_call>", "Let me compute.",
     [ROI_CALL, WEATHER_CALL]),
    # fenced blocks: what Qwen2.5-Coder-0.5B writes most often
    (f"```json\n{ROI}\n```", "", [ROI_CALL]),
    (f"Here is the call:\n```tool_call\n{ROI}\n```\nI will wait.", "Here is the call:\n\nI will wait.", [ROI_CALL]),
    (f"```\n[{ROI}, {WEATHER}]\n```", "", [ROI_CALL, WEATHER_CALL]),
    # bare objects and arrays, "parameters" (Llama 3) as well as "arguments"
    (ROI, "", [ROI_CALL]),
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [WEATHER_CALL]),
    (f"[{ROI}, {WEATHER}] ", "", [ROI_CALL, WEATHER_CALL]),
    (f"Sure. {WEATHER} Then I answer.", "Sure.  Then I answer.", [WEATHER_CALL]),
    # arguments given as a JSON string (OpenAI's own wire shape) and the OpenAI wrapper object
    ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', "", [WEATHER_CALL]),
    ('{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}', "", [WEATHER_CALL]),
    # family formats: Mistral, InternLM2, Llama's python tag
    (f"[TOOL_CALLS][{ROI}, {WEATHER}]", "", [ROI_CALL, WEATHER_CALL]),
    ('<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Paris"}}<|action_end|>', "",
     [WEATHER_CALL]),
    (f"<|python_tag|>{WEATHER}", "", [WEATHER_CALL]),
    # JSON inside strings: a closing tag or a fence inside an argument does not end the call
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "</tool_call> ```"}}</tool_call>', "",
     [("get_weather", {"city": "</tool_call> ```"})]),
])
def test_every_format_is_read(text: str, expected_text: str, expected: list) -> None:
    reply, calls = parse_tool_calls(text, TOOLS)
    assert names(calls) == expected
    assert reply == expected_text


@pytest.mark.parametrize("text", [
    '{"name": "send_email", "arguments": {"to": "a@b.c"}}',  # not an offered tool: stays text
    '```json\n{"name": "Alice", "age": 31}\n```',  # JSON that is not a call
    '<tool_call>\n{"name": "calculate_roi", "arguments": {"gain": 1',  # cut short by max_tokens
    '{"name": "calculate_roi"}',  # a bare object without arguments is not a call
    '[{"name": "calculate_roi", "arguments": {}}, 3]',  # an array that is not all calls
    "The answer is 42.",
    "",
])
def test_what_is_not_a_call_stays_text(text: str) -> None:
    assert parse_tool_calls(text, TOOLS) == (text, [])


def test_without_offered_tools_only_explicit_markers_count() -> None:
    assert names(parse_tool_calls(f"<tool_call>{ROI}</tool_call>")[1]) == [ROI_CALL]
    assert parse_tool_calls(ROI) == (ROI, [])


def test_call_ids_are_unique_and_kept_when_given() -> None:
    _, calls = parse_tool_calls(f"[{ROI}, {ROI}]", TOOLS)
    assert calls[0].id != calls[1].id
    _, calls = parse_tool_calls('{"id": "call_7", "name": "get_weather", "arguments": {"city": "Oslo"}}', TOOLS)
    assert calls[0].id == "call_7"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list('{}[]":,` <>/|\n') + ["name", "arguments", "get_weather", "tool_call", "1", "x",
                                                             "```json", "[TOOL_CALLS]", '"name": ', ROI]), max_size=40)
       .map("".join))
def test_parsing_never_raises_and_loses_nothing(text: str) -> None:
    reply, calls = parse_tool_calls(text, TOOLS)
    if not calls:
        assert reply == text  # nothing the model wrote is lost
    for call in calls:
        assert call.name in {"calculate_roi", "get_weather"} and isinstance(call.arguments, dict)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_parsing_arbitrary_text_never_raises(text: str) -> None:
    parse_tool_calls(text, TOOLS)
    parse_tool_calls("[" * 3000 + text, TOOLS)  # nesting deeper than the JSON decoder's recursion limit


# ---- the format table: each family's rendering reads back as the same calls -----------------------------------------

@pytest.mark.parametrize("family", sorted(FORMATS))
def test_format_round_trip(family: str) -> None:
    fmt = FORMATS[family]
    calls = [ToolCall(name="calculate_roi", arguments={"gain": 120, "cost": 100}),
             ToolCall(name="get_weather", arguments={"city": "Paris"})]
    written = fmt.render_calls(calls)
    assert names(parse_tool_calls(f"Thinking first.\n{written}", TOOLS)[1]) == [ROI_CALL, WEATHER_CALL]
    assert fmt.args_key in written


# A template that knows nothing of tools (like SmolLM2's): the family format is taught in the system message, past
# calls are written in it, results come back as user turns.
PLAIN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("family", sorted(FORMATS))
def test_rendered_round_trip_through_a_template_without_tools(family: str) -> None:
    fmt = FORMATS[family]
    call = ToolCall(name="get_weather", arguments={"city": "Paris"})
    messages = [Message.user("Weather in Paris?"), Message.assistant("", [call]),
                Message.tool("18 C", tool_call_id=call.id, name="get_weather")]
    prompt = render_chat(PLAIN_TEMPLATE, messages, tools=TOOLS, call_format=fmt)
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\n") and '"name": "calculate_roi"' in system
    assert fmt.render_calls([ToolCall(name="function_name", arguments={"argument": "value"})]) in system
    assistant = prompt.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert names(parse_tool_calls(assistant, TOOLS)[1]) == [WEATHER_CALL]
    assert f"<|im_start|>user\n{fmt.result_open}get_weather: 18 C{fmt.result_close}<|im_end|>" in prompt


def test_detect_format_from_template_or_style() -> None:
    assert detect_format("{{ '<tool_call>' }}").name == "hermes"
    assert detect_format("[TOOL_CALLS] {{ x }}").name == "mistral"
    assert detect_format("<|action_start|><|plugin|>").name == "internlm2"
    assert detect_format("<|python_tag|>").name == "llama3_json"
    assert detect_format(None).name == "hermes"
    assert detect_format("[TOOL_CALLS]", "internlm2").name == "internlm2"
    with pytest.raises(ConfigurationError, match="unknown tool_call_style 'xml'"):
        detect_format(None, "xml")


# ---- streaming and triggers ---------------------------------------------------------------------------------------

def stream(pieces: list[str]) -> tuple[str, str]:
    f = CallStreamFilter()
    shown = "".join(f.feed(p) for p in pieces)
    return shown, f.pending


def test_stream_filter_shows_text_and_holds_calls() -> None:
    assert stream(["The weather ", "is fine.", " [1] <b>"]) == ("The weather is fine. [1] <b>", "")
    shown, held = stream(["I'll check.\n<tool", "_call>\n{", '"name": "get_weather"}'])
    assert shown == "I'll check.\n" and held.startswith("<tool_call>")
    shown, held = stream(["Answer: ", "{", "\n  ", '"name"'])
    assert shown == "Answer: " and held == '{\n  "name"'
    shown, held = stream(["a ", "`", "`", "`json"])
    assert shown == "a " and held == "```json"


@pytest.mark.parametrize(("text", "start"), [
    ("Sure <tool_call>", 5), ('x ```json\n{"name": "get_weather"', 2), ("```tool_call \n", 0), ("```json", None), ('ab {"name":"calculate_roi"', 3),
    ('[ {\n "name": "get_weather"', 0), ("[TOOL_CALLS]", 0), ("<|python_tag|>", 0),
    ('{"name": "get_weather_report"', None),  # not an offered tool (a longer name): left free, so it stays text
    ('{"name": "get_weathe', None), ("plain text {not json", None), ("```python\nprint(1)", None),
    # inside a block of code a dict literal is code, not a call; after the block closes, calls start again
    ('```python\nx = {"name": "calculate_roi"', None), ('```py\n<tool_call>', None),
    ('```python\nx = 1\n```\n{"name": "get_weather"', 20), ('```\n{"name": "get_weather"', 4),
])
def test_trigger_start(text: str, start: int | None) -> None:
    assert trigger_start(text, call_trigger(["get_weather", "calculate_roi"])) == start


def test_trigger_start_looks_only_after_since_but_knows_the_blocks_before_it() -> None:
    trigger = call_trigger(["get_weather"])
    text = '{"name": "get_weather"} then ```python\n{"name": "get_weather"'
    assert trigger_start(text, trigger) == 0
    assert trigger_start(text, trigger, since=1) is None  # the second object is inside the python block
    assert trigger_start(text + '\n```\n{"name": "get_weather"', trigger, since=1) == len(text) + 5


def test_tool_choice_semantics() -> None:
    assert normalize_tool_choice(None, TOOLS) == ("auto", TOOLS)
    assert normalize_tool_choice("none", TOOLS) == ("none", [])
    assert normalize_tool_choice("required", TOOLS) == ("required", TOOLS)
    mode, chosen = normalize_tool_choice({"type": "function", "function": {"name": "get_weather"}}, TOOLS)
    assert mode == "named" and chosen == [TOOLS[1]]
    with pytest.raises(ConfigurationError, match="tool_choice names 'nope'"):
        normalize_tool_choice({"type": "function", "function": {"name": "nope"}}, TOOLS)
    with pytest.raises(ConfigurationError, match="tool_choice must be"):
        normalize_tool_choice("sometimes", TOOLS)


def test_plan_tools() -> None:
    grammar_caps = Capabilities(constraints=frozenset({"grammar", "json_schema"}), native_tools=True)
    fmt = FORMATS["hermes"]
    auto = plan_tools(GenerationParams(tools=TOOLS), fmt, grammar_caps)
    assert auto.grammar is None and auto.lazy_grammar and auto.render_tools == TOOLS
    forced = plan_tools(GenerationParams(tools=TOOLS, tool_choice="required"), fmt, grammar_caps)
    assert forced.grammar and forced.grammar.startswith("root ::= hermes") and forced.lazy_grammar is None
    none = plan_tools(GenerationParams(tools=TOOLS, tool_choice="none"), fmt, grammar_caps)
    assert none.render_tools is None and none.grammar is None and none.reply().finish() == ("", [])
    named = plan_tools(GenerationParams(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}),
                       fmt, grammar_caps)
    assert '"\\"get_weather\\""' in named.grammar and "calculate_roi" not in named.grammar
    no_grammar = plan_tools(GenerationParams(tools=TOOLS, tool_choice="required"), fmt, Capabilities(native_tools=True))
    assert no_grammar.grammar is None and no_grammar.lazy_grammar is None and no_grammar.render_tools == TOOLS
    single = plan_tools(GenerationParams(tools=TOOLS, parallel_tool_calls=False), fmt, grammar_caps)
    reply = single.reply()
    reply.feed(f"[{ROI}, {WEATHER}]")
    assert names(reply.finish()[1]) == [ROI_CALL]


def test_call_grammar_is_valid_gbnf_for_each_family() -> None:
    pytest.importorskip("llama_cpp")
    import llama_cpp

    from tests.conftest import smollm2_path

    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 is not installed")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    tools = [*TOOLS, spec("search", query="string", tags="array")]
    for fmt in FORMATS.values():
        for forced in (True, False):
            for parallel in (True, False):
                text = call_grammar(tools, fmt, forced=forced, parallel=parallel)
                sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, text.encode(), b"root")
                assert sampler, text
                llama_cpp.llama_sampler_free(sampler)
    item = call_grammar(tools, FORMATS["hermes"], forced=False, item=True)  # the next call of an array (call_count)
    assert "root ::= call" in item and "other-args" not in item  # one call, to offered tools only
    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, item.encode(), b"root")
    assert sampler, item
    llama_cpp.llama_sampler_free(sampler)


def test_looks_like_call() -> None:
    assert looks_like_call('I will call {"name": "get_weather", ...', TOOLS)
    assert looks_like_call("<tool_call> broken", TOOLS)
    assert not looks_like_call("It is sunny in Paris.", TOOLS)
    assert json.loads(ROI)["name"] == "calculate_roi"


def test_repeated_calls_in_one_reply_count_once() -> None:
    _, calls = parse_tool_calls(f"{ROI}\n{WEATHER}\n{ROI}", TOOLS)
    assert names(unique_calls(calls)) == [ROI_CALL, WEATHER_CALL]
    assert repeats_a_call(f"{ROI}\n{WEATHER}\n{ROI}", TOOLS) and not repeats_a_call(f"{ROI}\n{WEATHER}", TOOLS)
    reply = plan_tools(GenerationParams(tools=TOOLS), FORMATS["hermes"],
                       Capabilities(constraints=frozenset({"grammar"}), native_tools=True)).reply()
    reply.feed(f"{ROI} {ROI} {ROI}")
    assert names(reply.finish()[1]) == [ROI_CALL]
