"""Write a tool in ten lines and run an agent over it.

Run:  .venv/bin/python examples/custom_tool.py                 (ScriptedModel: no model needed)
      .venv/bin/python examples/custom_tool.py --model qwen2.5-coder-0.5b-instruct
"""

from __future__ import annotations

import argparse

from hanlin import Agent, ScriptedModel, load_model, tool


@tool
def convert_temperature(celsius: float) -> float:
    """Convert a temperature from Celsius to Fahrenheit.

    Args:
        celsius: The temperature in degrees Celsius.
    """
    return celsius * 9 / 5 + 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a real model (name or .gguf path); default: a scripted one")
    args = parser.parse_args()
    if args.model:
        model = load_model(args.model)
    else:  # what a model would write; the loop, the tool and the parsing are all real
        model = ScriptedModel([
            'Thought: I should convert it.\nAction: convert_temperature\nAction Input: {"celsius": 21.5}',
            "Thought: The tool answered.\nFinal Answer: 21.5 °C is 70.7 °F.",
        ])
    agent = Agent(model, [convert_temperature], protocol="react", max_steps=4)
    result = agent.run("What is 21.5 °C in Fahrenheit? Use the tool.")
    for call in result.tool_calls:
        print(f"called {call.name}({call.arguments})")
    print(f"{result.status}: {result.output}")


if __name__ == "__main__":
    main()
