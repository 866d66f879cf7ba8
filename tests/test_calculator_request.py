"""The calculator checks a call against the run's request: dropped parentheses, gcd/lcm computed without the function,
a range sum written as its two ends.

The cases are the calls Qwen2.5-Coder-0.5B made on the tooluse set (calculator_request's docstring)."""

from __future__ import annotations

import pytest

from hanlin import Agent, ScriptedModel, load_tool, tool_task

calc = load_tool("calculator")

ASKED = "What is (1234 - 567) * 89? Use the calculator."


def run(expression: str, request: str | None):
    with tool_task(request):
        return calc.invoke({"expression": expression})


def test_parentheses_the_call_dropped_are_the_requests() -> None:
    result = run("1234 - 567 * 89", ASKED)
    assert not result.is_error
    assert result.content == ("59363: (1234 - 567) * 89, as the request writes it with its parentheses; the call as "
                              "sent, '1234 - 567 * 89', is not what was asked.")
    assert "-49229" not in result.content  # shown, the call's own value was the number the model answered with
    # moved rather than dropped, and with other spacing: the same
    assert run("1234 - (567 * 89)", ASKED).content.startswith("59363:")


@pytest.mark.parametrize(("expression", "request_text", "expected"), [
    ("(1234 - 567) * 89", ASKED, "59363"),                      # the request's own grouping
    ("(1234-567)*89", ASKED, "59363"),                          # spacing is not grouping
    ("1234 - 567 * 89", None, "-49229"),                        # no agent run: no request to read
    ("1234 - 567 * 89", "What is 1234 - 567 * 89?", "-49229"),  # the request has no parentheses
    ("2 + 3 * 4", "Compare (2 + 3) * 4 with 2 + 3 * 4.", "14"),  # the request writes both groupings
    ("1234 - 567 * 88", ASKED, "-48662"),                       # other numbers: another calculation
    ("2 * (3 + 4)", "What is 2 * (3 + 4)? Add 1 later.", "14"),
])
def test_a_call_the_request_does_not_contradict_is_left_alone(expression, request_text, expected) -> None:
    assert run(expression, request_text).content == expected


@pytest.mark.parametrize(("expression", "request_text", "expected"), [
    ("1071 % 462", "What is the greatest common divisor of 1071 and 462? Use the calculator.",
     "21: gcd(1071, 462), the greatest common divisor the request asks for; the call as sent, '1071 % 462', is not "
     "what was asked."),
    ("12 * 18 * 30", "What is the least common multiple of 12, 18 and 30? Use the calculator.",
     "180: lcm(12, 18, 30), the least common multiple the request asks for; the call as sent, '12 * 18 * 30', is "
     "not what was asked."),
    ("4 * 6", "What's the LCM of 6 and 4?", "12: lcm(6, 4), the least common multiple the request asks for; the call "
                                           "as sent, '4 * 6', is not what was asked."),
    ("gcd(1071, 462)", "What is the greatest common divisor of 1071 and 462?", "21"),  # the function was used
    ("1071 % 462", "What is 1071 % 462?", "147"),                                      # no function named
])
def test_a_gcd_or_lcm_request_reads_the_calls_numbers_with_the_function(expression, request_text, expected) -> None:
    assert run(expression, request_text).content == expected


@pytest.mark.parametrize(("expression", "request_text", "name"), [
    ("48 - 36", "Find the highest common factor of 48 and 36 and 60.", "gcd"),  # some of the request's numbers
    ("12 * 18", "What is the least common multiple of 12, 18 and 30?", "lcm"),
    ("1.5 * 2", "What is the lcm of 1.5 and 2?", "lcm"),                 # no whole numbers to take
])
def test_a_gcd_or_lcm_request_with_other_numbers_is_not_run(expression, request_text, name) -> None:
    result = run(expression, request_text)
    assert result.is_error and "not run" in result.content and repr(expression) in result.content
    assert f"The calculator has {name}(a, b, ...)" in result.content


@pytest.mark.parametrize(("expression", "expected"), [
    ("12 * 3", "36"),   # the LCM of 4 and 6 in hand: a later step
    ("48 / 5", "9.6"),  # a number the request does not hold
])
def test_a_call_with_a_number_the_request_does_not_hold_runs_as_written(expression, expected) -> None:
    request = "Take the least common multiple of 4 and 6, then multiply it by 3."
    assert run(expression, request).content == expected


RANGE_SUM = "What is the sum of all the integers from 1 to 250? Use the calculator."


@pytest.mark.parametrize(("expression", "request_text", "expected"), [
    ("1 + 250", RANGE_SUM, "31375: 1 + 2 + ... + 250, the sum of the integers from 1 to 250 the request asks for; the "
                           "call as sent, '1 + 250', is not what was asked."),
    ("250+1", RANGE_SUM, "31375: 1 + 2 + ... + 250, the sum of the integers from 1 to 250 the request asks for; the "
                         "call as sent, '250+1', is not what was asked."),
    ("1 * 10", "What is the product of the numbers from 1 through 10?",
     "3628800: 1 * 2 * ... * 10, the product of the integers from 1 to 10 the request asks for; the call as sent, "
     "'1 * 10', is not what was asked."),
    ("1 + 2 + ... + 250", RANGE_SUM, "31375"),  # the range written out
    ("250 * 251 / 2", RANGE_SUM, "31375"),      # Gauss's formula
    ("1 * 250", RANGE_SUM, "250"),              # not the ends added: another calculation
    ("1 + 250", "What is the sum of 1 and 250?", "251"),
    ("3 + 4", "What is the sum of the integers from 3 to 4?", "7"),  # the ends are the whole range
])
def test_a_range_sum_read_from_the_calls_two_ends(expression, request_text, expected) -> None:
    assert run(expression, request_text).content == expected


def test_an_agent_run_gives_the_calculator_its_request() -> None:
    model = ScriptedModel(['Thought: compute\nAction: calculator\nAction Input: {"expression": "1234 - 567 * 89"}',
                           "Thought: done\nFinal Answer: 59363"])
    agent = Agent(model, [calc])
    result = agent.run(ASKED)
    observation = next(m for m in result.messages if m.role == "tool").content
    assert observation.startswith("59363: (1234 - 567) * 89, as the request writes it")
