"""A request about a date answered by a function that gives only the present is withheld
(runtimes/undated_calls.py); calls that carry the date, could take it, say nothing of when, serve a later step, or
write free text stand."""

from __future__ import annotations

import datetime as dt

import pytest

from hanlin import Capabilities, GenerationParams, Message, ToolCall
from hanlin.runtimes.tool_calls import FORMATS, plan_tools
from hanlin.runtimes.undated_calls import gives_the_present, named_dates, takes_a_date, undated_note


def function(name: str, description: str, **properties) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": list(properties)[:1]}}}


WEATHER = function("get_current_weather", "Current weather conditions for a city.", city={"type": "string"},
                   unit={"type": "string", "enum": ["celsius", "fahrenheit"]})
FORECAST = function("get_weather_forecast", "Current forecast for a city.", city={"type": "string"},
                    days={"type": "integer", "description": "How many days ahead."})
TRACK = function("track_order", "Shipping status of an order.", order_id={"type": "string"})
NOTIFY = function("post_live_update", "Post a message to the live channel.", message={"type": "string"})
LONDON_1900 = "What was the weather like in London on 1 January 1900?"


def ask(text: str) -> list[Message]:
    return [Message(role="system", content="You have functions."), Message(role="user", content=text)]


def weather(city: str = "London", **more) -> ToolCall:
    return ToolCall(name="get_current_weather", arguments={"city": city, **more})


@pytest.mark.parametrize(("text", "expected"), [
    (LONDON_1900, [("1 January 1900", "1900")]),
    ("Book it on 2025-04-09, not on March 3, 2021 or in June 1998",
     [("2025-04-09", "2025"), ("March 3, 2021", "2021"), ("June 1998", "1998")]),
    ("the 21st of Sept. 2003", [("21st of Sept. 2003", "2003")]),
    # no calendar date with a year: a bare year, a number, a version, a date without its year, no such month
    ("Who won the World Cup in 1986?", []), ("Buy 2025 shares", []), ("Python 3.12 on 5 May", []),
    ("order 2025-13-40", []),
    # today, in any form, is the present, give or take a day (the user's time zone may be a day off the machine's)
    ("Weather today, 2026-12-07? Or on 7 December 2026, or in December 2026, or 2026-12-08, or 6 Dec 2026", []),
    ("And on 2026-12-09 or 5 Dec 2026 or November 2026?",
     [("2026-12-09", "2026"), ("5 Dec 2026", "2026"), ("November 2026", "2026")]),
    ("On 2026-02-30?", [("2026-02-30", "2026")]),  # no such day: not today
])
def test_named_dates_are_calendar_dates_with_their_year_other_than_today(text, expected) -> None:
    assert named_dates(text, today=dt.date(2026, 12, 7)) == expected


def test_a_function_takes_a_date_by_a_parameter_about_when() -> None:
    assert not takes_a_date(WEATHER["function"]["parameters"])
    assert takes_a_date(FORECAST["function"]["parameters"])  # "days"
    assert takes_a_date({"properties": {"checkIn": {"type": "string", "description": "Arrival."}, "startDate": {}}})
    assert takes_a_date({"properties": {"at": {"type": "string", "format": "date-time"}}})
    assert not takes_a_date({"properties": {"from_unit": {"type": "string"}, "update": {"type": "boolean"}}})


@pytest.mark.parametrize(("name", "description", "expected"), [
    ("get_current_weather", "", True), ("get_stock_price", "Latest trading price of a listed stock.", True),
    ("check_flight_status", "Live status of a flight.", True), ("getNowPlaying", "", True),
    ("apply_coupon", "Apply a discount code to the current cart.", False),  # "current" is not what it gives
    ("convert_currency", "Convert money at today's rate.", False), ("track_order", "Shipping status.", False),
])
def test_a_function_gives_the_present_by_its_name_or_the_opening_of_its_description(name, description,
                                                                                     expected) -> None:
    assert gives_the_present({"name": name, "description": description}) is expected


def test_a_call_for_today_stands_whenever_the_test_runs() -> None:
    today = dt.date.today().isoformat()  # read when the test runs, not when it is collected: CI may cross midnight
    assert undated_note([weather()], [WEATHER], ask(f"What is the weather like in London on {today}?")) is None


def test_a_call_that_drops_the_date_asked_about_is_withheld() -> None:
    note = undated_note([weather()], [WEATHER], ask(LONDON_1900))
    assert note == ("Not calling get_current_weather: the request is about 1 January 1900, and get_current_weather "
                    "takes no date (it gives the present).")
    # parallel calls of that one function alike
    assert undated_note([weather(), weather("Paris")], [WEATHER], ask("Weather in London and Paris on 2020-05-01?"))


@pytest.mark.parametrize(("calls", "tools", "messages"), [
    ([weather()], [WEATHER], ask("What is the weather like in London?")),  # no date
    ([weather("London, 1 January 1900")], [WEATHER], ask(LONDON_1900)),  # the call carries the year
    ([ToolCall(name="get_weather_forecast", arguments={"city": "Oslo"})], [FORECAST],
     ask("Will it rain in Oslo on 2026-12-09?")),  # the function takes a date; the model left it out
    ([ToolCall(name="track_order", arguments={"order_id": "4471"})], [TRACK],
     ask("My order 4471 of 2025-01-02 has not come. Where is it?")),  # a date in passing: it says nothing of when
    ([ToolCall(name="post_live_update", arguments={"message": "Match moved to the afternoon"})], [NOTIFY],
     ask("Post that the match of 2025-03-01 moved")),  # free text: the model chose what to write
    ([weather(), ToolCall(name="post_live_update", arguments={"message": "Hi"})], [WEATHER, NOTIFY],
     ask("Weather in London now, and post Hi as of 2025-03-01")),  # two functions: either may serve the date
    ([weather()], [WEATHER], [*ask(LONDON_1900), Message(role="assistant", content="", tool_calls=[weather("Kew")]),
                              Message(role="tool", content="12 C", tool_call_id="x", name="get_current_weather")]),
])
def test_calls_that_carry_or_could_take_the_date_stand(calls, tools, messages) -> None:
    assert undated_note(calls, tools, messages) is None


def test_the_runtime_reply_keeps_the_note_in_place_of_the_call_unless_a_call_was_required() -> None:
    def settle(**params):
        plan = plan_tools(GenerationParams(tools=[WEATHER], **params), FORMATS["hermes"], Capabilities(),
                          ask(LONDON_1900))
        return plan.settle("", [weather()])

    text, calls, note = settle()
    assert calls == [] and note.startswith("\nNot calling get_current_weather: the request is about 1 January 1900")
    assert [c.name for c in settle(tool_choice="required")[1]] == ["get_current_weather"]  # a call was asked for
    assert [c.name for c in settle(ground_arguments=False)[1]] == ["get_current_weather"]
