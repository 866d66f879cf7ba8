"""ReAct on questions that name the tools to use ("find the rate in the knowledge base, then use the calculator"):
the observation nudge says which named tools are still unused and, once all are, that they are; the repeat guard
offers the still-unused named tools beside the answer; earlier steps are shown without their Thought line. Loop logic
on ScriptedModel (the quality these buy is measured by `hanlin eval -d tooluse --protocol react`)."""

from __future__ import annotations

import importlib.util

import pytest

from hanlin import Agent, ScriptedModel, tool
from hanlin.plugins.protocols.react import observation_nudge, without_thought
from hanlin.plugins.protocols.tool_plan import planned_order, requested_tools


@tool
def calculator(expression: str) -> str:
    """Evaluate arithmetic.

    Args:
        expression: the expression
    """
    return str(eval(expression, {"__builtins__": {}}))  # test-only: the scripted model writes the expressions


@tool
def knowledge_base(query: str) -> str:
    """Look a fact up.

    Args:
        query: the fact
    """
    return "Meals: at most 45 euros per day."


QUESTION = "What is paid for meals on a 6-day trip? Find the daily limit in the knowledge base, then use the calculator."
LOOKUP = 'Thought: I need the daily limit.\nAction: knowledge_base\nAction Input: {"query": "daily meal limit"}'
COMPUTE = 'Thought: 45 per day for 6 days.\nAction: calculator\nAction Input: {"expression": "45 * 6"}'


def test_requested_tools_are_the_offered_tools_the_question_names_as_whole_words() -> None:
    tools = ["calculator", "python", "knowledge_base"]
    assert requested_tools(QUESTION, tools) == ["calculator", "knowledge_base"]
    assert requested_tools("Use Python to count.", tools) == ["python"]
    assert requested_tools("Is a calculators shop open? Ask pythonistas.", tools) == []  # whole words only


def test_the_nudge_names_the_unused_requested_tools_then_says_they_are_used() -> None:
    model = ScriptedModel([LOOKUP, COMPUTE, "Thought: done\nFinal Answer: 270"])
    result = Agent(model, [calculator, knowledge_base]).run(QUESTION)
    assert result.status == "answered" and result.output_text == "270"
    after_lookup, after_compute = model.calls[1][0][-1].content, model.calls[2][0][-1].content
    assert after_lookup.endswith("\nIt asks you to use calculator, which you have not used yet.")
    assert after_compute.endswith("\nYou have used the tools it asks for; the last one gave the result above.\n"
                                  "If this result answers the question, reply with it as the Final Answer.")
    # the earlier observation turn is rendered the same way at every later step (the prompt only grows)
    assert model.calls[2][0][-3].content == after_lookup
    # a question that names no tool, or one tool it has used, keeps the plain nudge
    for question in ("What is 2 + 2?", "What is 2 + 2? Use the calculator."):
        assert observation_nudge(question, ["calculator"], {"calculator"}).endswith(
            "\nIf this answers the question, reply with the Final Answer.")


def test_after_a_repeat_the_grammar_offers_only_the_unused_requested_tools() -> None:
    grammars: list[str] = []
    replies = [LOOKUP, LOOKUP,  # the repeat: not run again
               COMPUTE, COMPUTE,  # a repeat with every requested tool used: only the answer is left
               "Thought: done\nFinal Answer: 270"]

    def reply(messages, params):
        grammars.append(params.constraint.grammar)
        return replies[len(grammars) - 1]

    result = Agent(ScriptedModel(reply), [calculator, knowledge_base]).run(QUESTION)
    assert result.status == "answered" and result.output_text == "270"
    offered = [("knowledge_base" in g.split("action ::=")[-1] if "action ::=" in g else False,
                "calculator" in g.split("action ::=")[-1] if "action ::=" in g else False) for g in grammars]
    # the first step offers the knowledge base only: the question names it before the calculator ("..., then")
    assert offered == [(True, False), (True, True), (False, True), (True, True), (False, False)]
    # after the repeated look-up the calculator is the only way on: no Final Answer (kb-13 had answered 45)
    roots = [g.split("root ::=")[1].split("\n")[0] for g in grammars]
    assert ["final" in r for r in roots] == [True, True, False, True, True]
    # tools named as alternatives are no sequence: after a repeat the answer stays open beside the unused one
    either: list[str] = []
    steps = [COMPUTE, COMPUTE, "Thought: done\nFinal Answer: 270"]

    def reply_either(messages, params):
        either.append(params.constraint.grammar)
        return steps[len(either) - 1]

    answered = Agent(ScriptedModel(reply_either), [calculator, knowledge_base]).run(
        "What are 6 days of meals at 45 euros? Use the calculator or the knowledge base.")
    assert answered.output_text == "270"
    assert "final" in either[2].split("root ::=")[1].split("\n")[0] and "knowledge_base" in either[2]


def test_a_call_back_to_an_earlier_tool_of_the_plan_is_followed_by_what_the_last_one_gave() -> None:
    """kb-13: after computing 270 the model looked the meal limit up again and, shown it, answered 45."""
    model = ScriptedModel([LOOKUP, COMPUTE, LOOKUP.replace("daily meal limit", "meal limit"),
                           "Thought: done\nFinal Answer: 270"])
    result = Agent(model, [calculator, knowledge_base]).run(QUESTION)
    assert result.output_text == "270"
    assert model.calls[3][0][-1].content == (
        "Observation: Meals: at most 45 euros per day.\nThe question was: " + QUESTION + "\nYou have used the tools "
        "it asks for; calculator, the last of them, gave 270.\nIf that answers the question, reply with it as the "
        "Final Answer.")
    # after the last tool itself, the nudge stays as it was
    assert model.calls[2][0][-1].content.endswith("the last one gave the result above.\n"
                                                  "If this result answers the question, reply with it as the Final "
                                                  "Answer.")


def test_on_a_question_naming_several_tools_earlier_steps_are_shown_without_their_thought() -> None:
    model = ScriptedModel([LOOKUP, COMPUTE, "Thought: done\nFinal Answer: 270"])
    Agent(model, [calculator, knowledge_base]).run(QUESTION)
    shown = [m.content for m in model.calls[2][0] if m.role == "assistant"]
    assert shown == ['Action: knowledge_base\nAction Input: {"query": "daily meal limit"}',
                     'Action: calculator\nAction Input: {"expression": "45 * 6"}']
    assert without_thought("Thought: sure\nFinal Answer: 3") == "Final Answer: 3"
    assert without_thought("no labels at all") == "no labels at all"
    # a question naming one tool or none keeps the steps as the model wrote them
    plain = ScriptedModel([COMPUTE, "Thought: done\nFinal Answer: 270"])
    Agent(plain, [calculator, knowledge_base]).run("What is 45 * 6? Use the calculator.")
    assert [m.content for m in plain.calls[1][0] if m.role == "assistant"] == [COMPUTE]


def test_planned_order_is_the_order_a_question_names_its_tools_in_with_then() -> None:
    tools = ["calculator", "python", "knowledge_base"]
    assert planned_order(QUESTION, tools) == ["knowledge_base", "calculator"]
    assert planned_order("Use the calculator, then check it with Python.", tools) == ["calculator", "python"]
    assert planned_order("Use Python or the calculator.", tools) == []  # no sequence
    assert planned_order("Then use Python and the knowledge base.", tools) == []  # "then" before both
    assert planned_order("Find it in the knowledge base, then answer.", tools) == []  # one tool


def test_a_tool_named_later_in_the_sequence_waits_for_the_earlier_ones() -> None:
    question = "Find the floors and desks per floor in the knowledge base, then use the calculator and the spreadsheet."
    sheet = 'Thought: check\nAction: spreadsheet\nAction Input: {"formula": "=3*28"}'
    replies = [LOOKUP, LOOKUP.replace("daily meal limit", "desks per floor"), COMPUTE, sheet,
               "Thought: done\nFinal Answer: 84"]
    model = ScriptedModel(replies)
    result = Agent(model, [calculator, knowledge_base, spreadsheet, clock]).run(question)
    assert result.status == "answered"
    actions = [g.split("action ::=")[-1] if "action ::=" in g else "" for g in (p.constraint.grammar for _, p in model.calls)]
    offered = [tuple(name in a for name in ("knowledge_base", "calculator", "spreadsheet", "clock")) for a in actions]
    # kb first; once used, the calculator opens (kb may be called again) and the spreadsheet waits for it; the clock,
    # which the question does not name, only once the sequence is done
    assert offered == [(True, False, False, False), (True, True, False, False), (True, True, False, False),
                       (True, True, True, False), (True, True, True, True)]


@tool
def clock() -> str:
    """The time now."""
    return "12:00"


@tool
def spreadsheet(formula: str) -> str:
    """Evaluate a spreadsheet formula.

    Args:
        formula: the formula
    """
    return "ok"


def test_tools_protocol_follows_the_questions_sequence_and_names_the_unused_tool() -> None:
    from hanlin import Completion, ToolCall
    from hanlin.plugins.protocols.native import PENDING_NUDGE, RESULT_NUDGE

    lookup = ToolCall(name="knowledge_base", arguments={"query": "daily meal limit"})
    compute = ToolCall(name="calculator", arguments={"expression": "45 * 6"})
    model = ScriptedModel([Completion(tool_calls=[lookup]), Completion(tool_calls=[compute]), "270"])
    result = Agent(model, [calculator, knowledge_base, clock], protocol="tools").run(QUESTION)
    assert result.status == "answered" and result.output == "270"
    offered = [sorted(t["function"]["name"] for t in p.tools or []) for _, p in model.calls]
    # the knowledge base first, then it and the calculator; every tool once the sequence is done
    assert offered == [["knowledge_base"], ["calculator", "knowledge_base"], ["calculator", "clock", "knowledge_base"]]
    after_lookup, after_compute = model.calls[1][0][-1].content, model.calls[2][0][-1].content
    assert after_lookup.endswith("\n" + PENDING_NUDGE.format(pending="calculator"))
    assert after_compute.endswith("\n" + RESULT_NUDGE)
    assert result.messages[2].content == "Meals: at most 45 euros per day."  # the nudge is in the model's view only


@pytest.mark.skipif(importlib.util.find_spec("ipykernel") is None, reason="pip install 'hanlin[tools]'")
def test_code_protocol_names_the_functions_the_code_has_not_called() -> None:
    cells = ["Thought: guess\n```python\nprint(6 * 40)\n```",
             'Thought: look up\n```python\nprint(knowledge_base("daily meal limit"))\n```',
             'Thought: compute\n```python\nprint(calculator(expression="45 * 6"))\n```',
             "Thought: done\n```python\nfinal_answer(270)\n```"]
    model = ScriptedModel(cells)
    with Agent(model, [calculator, knowledge_base], protocol="code") as agent:
        result = agent.run(QUESTION)
    assert result.status == "answered" and result.output == "270"
    nudges = [model.calls[i][0][-1].content.rsplit("\n", 1)[-1] for i in (1, 2, 3)]
    assert nudges == ["It asks you to use calculator(...) and knowledge_base(...), which your code has not called yet.",
                      "It asks you to use calculator(...), which your code has not called yet.",
                      "If this gives the answer, call final_answer(...) with it."]
