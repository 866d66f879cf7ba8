"""A reply that looped to the length limit is decoded once more with a frequency penalty (hanlin.protocols.runaway).

The loops are the default model's own, copied from tooluse runs; the scripted model stands in for its decoder only
to test the loop's logic (which call is re-decoded, with what parameters)."""

from __future__ import annotations

import pytest

from hanlin import Agent, ScriptedModel, load_tool
from hanlin.chat_model import Completion, GenerationParams
from hanlin.messages import ToolCall
from hanlin.protocols.runaway import RUNAWAY_PENALTY, is_runaway, repeats_itself

LOOPS = [
    '{"expression": "12 * 18 * 30 / (12 * 18) / (12 * 18) / (12 * 18) / (12 * 18) / (12 * 18) / (12 * 1',
    '{"expression": "3 * 1200 / 10000000000000000000000000000000000000000',
    "Action Input: {\"expression\": \"5 * 5 * 5 * 5 * 5 * 5 * 5 * 5 * 5 * 5 * 5 * 5 * 5 * 5",
    "```python\ntotal = 100\n" + "# Calculate the number of desks and car parking spaces together\n"
    "total_desks_and_parking_spaces = total_desks + total_parking_spaces\n\n" * 5 + "# Calculate the num",
]
NOT_LOOPS = [
    "Thought: I need the sum of the digits.\nAction: python\nAction Input:\n```python\nprint(sum(map(int, str(2**100)))",
    "The answer is 1000000.",                         # a round number is no loop
    "x = 1\ny = 2\nz = 3\n" + "print(x + y + z)\n",  # short lines alike, not one repeated
    "-" * 20,                                          # under the span a loop needs
]


@pytest.mark.parametrize("text", LOOPS)
def test_the_default_models_loops_repeat_themselves(text: str) -> None:
    assert repeats_itself(text)


@pytest.mark.parametrize("text", NOT_LOOPS)
def test_ordinary_replies_do_not(text: str) -> None:
    assert not repeats_itself(text)


def test_a_loop_the_grammar_closed_is_a_runaway_too() -> None:
    """The step's grammar caps an open string at 500 characters, so a loop inside one ends as a finished reply."""
    greedy = GenerationParams()
    loop = "12 * 18 * 30" + " / (12 * 18)" * 41
    native = Completion(tool_calls=[ToolCall(name="calculator", arguments={"expression": loop[:500]})],
                        finish_reason="tool_calls")
    react = Completion(text='Thought: x\nAction: calculator\nAction Input: {"expression": "' + loop[:500] + '"}\n')
    assert is_runaway(native, greedy) and is_runaway(react, greedy)
    assert not is_runaway(native, GenerationParams(frequency_penalty=0.5))
    short = Completion(tool_calls=[ToolCall(name="calculator", arguments={"expression": loop[:120]})],
                       finish_reason="tool_calls")  # a finished call that repeats a little is the model's call
    answer = Completion(text="Final Answer: " + "0, 1, " * 20)  # and so is a finished answer
    code = Completion(text="```python\n" + "".join(f"x{i} = {i} * {i}\n" for i in range(60)) + "```")
    assert not any(is_runaway(c, greedy) for c in (short, answer, code))


LOOPING_CALL = 'Thought: compute\nAction: calculator\nAction Input: {"expression": "5 * 5 * 5 * 5 * 5 * 5 * 5 * 5 * 5 * 5'


def looping_model(reply_when_penalised: str, cut_reply: str = LOOPING_CALL) -> ScriptedModel:
    """Loops (cut at the limit) while decoding without a penalty, like greedy decoding does on every retry."""
    acted = []

    def reply(messages, params: GenerationParams) -> Completion | str:
        if acted:
            return "Thought: done\nFinal Answer: 288"
        if params.frequency_penalty:
            acted.append(True)
            return reply_when_penalised
        return Completion(text=cut_reply, finish_reason="length")
    return ScriptedModel(reply)


def test_a_looping_reply_is_decoded_again_with_a_penalty() -> None:
    model = looping_model('Thought: compute\nAction: calculator\nAction Input: {"expression": "24 * 60 / 5"}')
    agent = Agent(model, [load_tool("calculator")])
    result = agent.run("How many readings in a day, one every 5 minutes?")
    assert result.status == "answered" and result.output == "288"
    assert [c.arguments for c in result.tool_calls] == [{"expression": "24 * 60 / 5"}]
    penalties = [params.frequency_penalty for _, params in model.calls]
    assert penalties == [None, RUNAWAY_PENALTY, None]  # once, for the looping step only
    runaway = [e for e in result.events if e.type == "error" and e.kind == "runaway"]
    assert len(runaway) == 1 and runaway[0].recoverable and "frequency_penalty=1.0" in runaway[0].message


def test_a_long_reply_cut_off_without_a_loop_is_not_decoded_again() -> None:
    cut = "Thought: compute\nAction: python\nAction Input:\n```python\nimport math\nprint(math.comb(50, 7)"
    model = looping_model("never used", cut_reply=cut)
    agent = Agent(model, [load_tool("calculator"), load_tool("python")], max_steps=2)
    agent.run("How many ways to choose 7 of 50?")
    agent.close()
    assert all(params.frequency_penalty is None for _, params in model.calls)


def test_a_penalty_the_caller_set_is_kept() -> None:
    model = ScriptedModel(lambda messages, params: Completion(text=LOOPING_CALL, finish_reason="length"))
    agent = Agent(model, [load_tool("calculator")], params={"frequency_penalty": 0.2}, max_steps=2)
    result = agent.run("How many readings in a day?")
    assert {params.frequency_penalty for _, params in model.calls} == {0.2}
    assert not any(e.type == "error" and e.kind == "runaway" for e in result.events)
