"""Calls the model named after their subject are read as calls to the one tool they fit; wished-for functions stay
text. The replies are the default model's own (function_calling eval, greedy)."""

from __future__ import annotations

from hanlin import Capabilities, GenerationParams, Message, ToolCall
from hanlin.runtimes.argument_grounding import Evidence
from hanlin.runtimes.labelled_calls import fits, is_label, labelled_calls
from hanlin.runtimes.tool_calls import FORMATS, plan_tools


def named(calls: list[ToolCall]) -> list[tuple[str, dict]]:
    return [(c.name, c.arguments) for c in calls]  # ids are new for every call read


def fn(name: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


DEFINE = fn("define_word", {"word": {"type": "string"}, "language": {"type": "string", "default": "English"}}, ["word"])
RECIPES = fn("find_recipes", {"ingredients": {"type": "array", "items": {"type": "string"}},
                              "diet": {"type": "string", "enum": ["none", "vegetarian", "vegan"]},
                              "max_minutes": {"type": "integer"}}, ["ingredients"])
NUTRITION = fn("get_nutrition_facts", {"food": {"type": "string"}, "grams": {"type": "number"}}, ["food"])
PRIMES = fn("prime_factors", {"number": {"type": "integer"}}, ["number"])
GCD = fn("greatest_common_divisor", {"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"])
CIRCLE = fn("circle_area", {"radius": {"type": "number"}}, ["radius"])
DISTANCE = fn("distance_between_points", {"x1": {"type": "number"}, "y1": {"type": "number"}}, ["x1", "y1"])
SCALE = fn("scale_recipe", {"recipe_name": {"type": "string"}, "servings": {"type": "integer"}},
           ["recipe_name", "servings"])

TWO_WORDS = """```json
[
  {"name": "ephemeral", "arguments": {"word": "ephemeral", "language": "English"}},
  {"name": "laconic", "arguments": {"word": "laconic", "language": "English"}}
]
```"""


def test_a_name_made_of_the_arguments_words_or_of_no_letters_is_a_label() -> None:
    assert is_label("ephemeral", {"word": "ephemeral"})
    assert is_label("vegetarian_chickpeas_spinach", {"ingredients": ["chickpeas", "spinach"], "diet": "vegetarian"})
    assert is_label("2", {"number": 9996})
    assert not is_label("sphere_volume", {"radius": 3})  # a function nobody offered
    assert not is_label("cook_salmon_potatoes_dill", {"food": "salmon", "grams": 100})  # 'cook' is no value
    assert not is_label("", {"word": "x"})


def test_arguments_fit_a_schema_by_names_required_ones_and_enums() -> None:
    schema = RECIPES["function"]["parameters"]
    assert fits({"ingredients": ["salmon"], "diet": "vegan"}, schema)
    assert not fits({"ingredients": ["salmon"], "diet": "keto"}, schema)  # not one of the enum's values
    assert not fits({"diet": "vegan"}, schema)  # the required ingredients missing
    assert not fits({"ingredients": ["salmon"], "calories": 300}, schema)  # an argument it does not take
    assert not fits({}, schema)


def test_labelled_calls_become_calls_to_the_tool_they_fit() -> None:
    evidence = Evidence.of(["Define 'ephemeral' and 'laconic' for me."])
    rest, calls = labelled_calls("Here you are.\n" + TWO_WORDS, [DEFINE, PRIMES], evidence)
    assert rest == "Here you are."
    assert named(calls) == [("define_word", {"word": "ephemeral", "language": "English"}),
                            ("define_word", {"word": "laconic", "language": "English"})]
    rest, calls = labelled_calls('{"name": "2", "arguments": {"number": 9996}}', [PRIMES, GCD, CIRCLE],
                                 Evidence.of(["What are the prime factors of 9996?"]))
    assert (rest, named(calls)) == ("", [("prime_factors", {"number": 9996})])


def test_a_wished_for_function_or_an_unsure_label_stays_text() -> None:
    volume = '{"name": "sphere_volume", "arguments": {"radius": 3}}'
    assert labelled_calls(volume, [CIRCLE, DISTANCE], Evidence.of(["The volume of a sphere of radius 3?"])) \
        == (volume, [])
    # a label whose required value nobody gave: no one asked to scale anything to 10 servings
    sourdough = '{"name": "Sourdough Starter", "arguments": {"recipe_name": "Sourdough Starter", "servings": 10}}'
    assert labelled_calls(sourdough, [SCALE], Evidence.of(["Give me a recipe for sourdough starter."])) \
        == (sourdough, [])
    # arguments two tools take: which one was meant is not known
    both = '{"name": "9996", "arguments": {"number": 9996}}'
    twin = fn("is_prime", {"number": {"type": "integer"}}, ["number"])
    assert labelled_calls(both, [PRIMES, twin], Evidence.of(["9996?"])) == (both, [])
    # one of two unknown names is no label: the reply is left whole
    mixed = TWO_WORDS.replace('"laconic", "arguments"', '"lookup_word", "arguments"')
    assert labelled_calls(mixed, [DEFINE], Evidence.of(["Define 'ephemeral' and 'laconic'."])) == (mixed, [])


def test_the_plan_reads_labels_only_from_a_reply_without_calls_and_never_under_a_forced_choice() -> None:
    caps = Capabilities(constraints=frozenset({"grammar"}), native_tools=True)
    ask = [Message.user("I have chickpeas and spinach; a vegetarian dish in 30 minutes?")]
    written = ('{"name": "vegetarian_chickpeas_spinach", "arguments": {"ingredients": ["chickpeas", "spinach"], '
               '"diet": "vegetarian", "max_minutes": 30}}')
    plan = plan_tools(GenerationParams(tools=[NUTRITION, RECIPES]), FORMATS["hermes"], caps, ask)
    text, calls, note = plan.settle(written, [])
    assert (text, note) == ("", "")
    assert named(calls) == [("find_recipes", {"ingredients": ["chickpeas", "spinach"], "diet": "vegetarian",
                                              "max_minutes": 30})]
    as_written = plan_tools(GenerationParams(tools=[NUTRITION, RECIPES], ground_arguments=False),
                            FORMATS["hermes"], caps, ask)
    assert as_written.settle(written, []) == (written, [], "")
    forced = plan_tools(GenerationParams(tools=[NUTRITION, RECIPES], tool_choice="required"), FORMATS["hermes"],
                        caps, ask)
    assert forced.settle(written, []) == (written, [], "")  # its grammar allowed offered names only
    one = plan_tools(GenerationParams(tools=[DEFINE], parallel_tool_calls=False), FORMATS["hermes"], caps,
                     [Message.user("Define 'ephemeral' and 'laconic' for me.")])
    assert [c.arguments["word"] for c in one.settle(TWO_WORDS, [])[1]] == ["ephemeral"]
