"""Embed an agent in an application: streamed events, per-user sessions, saved traces.

A tiny "support desk" where each user has their own conversation memory, the
app shows tool activity as it happens, and every run is appended to a trace
file (the Message JSONL that hanlin's finetuners train on).

Run:  .venv/bin/python examples/embed_in_app.py [--model smollm2] [--trace /tmp/desk.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from hanlin import (
    Agent,
    ScriptedModel,
    ToolCallEvent,
    ToolResultEvent,
    load_model,
    load_tool,
    load_traces,
    tool,
)

ORDERS = {"A-100": "shipped on Monday", "B-200": "waiting for payment"}


@tool
def order_status(order_id: str) -> str:
    """Look up the status of an order.

    Args:
        order_id: The order number, like "A-100".
    """
    if order_id not in ORDERS:
        raise KeyError(f"no order {order_id}; known orders look like A-100")
    return ORDERS[order_id]


def scripted() -> ScriptedModel:
    return ScriptedModel([
        'Thought: look it up\nAction: order_status\nAction Input: {"order_id": "A-100"}',
        "Thought: I have it.\nFinal Answer: Order A-100 shipped on Monday.",
        'Thought: the user asked about the same order, from memory\nAction: calculator\nAction Input: {"expression": "2 * 3"}',
        "Thought: done\nFinal Answer: It shipped on Monday; and 2 * 3 is 6.",
    ])


def show(user: str):
    """Progress for one user, as a web app would push it over a websocket."""

    def on_event(event) -> None:
        if isinstance(event, ToolCallEvent):
            print(f"  [{user}] using {event.call.name} {event.call.arguments}")
        elif isinstance(event, ToolResultEvent):
            print(f"  [{user}] {event.name} -> {event.content}")

    return on_event


async def handle(agent: Agent, user: str, text: str, trace: Path) -> str:
    """What a request handler does: run in the user's session, stream progress, keep the trace."""
    result = await agent.arun(text, session_id=user, on_event=show(user))
    result.save_trace(trace)
    return result.output if result.status == "answered" else f"(no answer: {result.error})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a real model; default: a scripted one")
    parser.add_argument("--trace", type=Path, default=Path(tempfile.mkdtemp()) / "desk.jsonl")
    args = parser.parse_args()
    model = load_model(args.model) if args.model else scripted()
    agent = Agent(model, [order_status, load_tool("calculator")], protocol="react", max_steps=4)

    print("alice:", await handle(agent, "alice", "Where is my order A-100?", args.trace))
    print("alice:", await handle(agent, "alice", "And what is 2 * 3?", args.trace))
    history = agent.history("alice")
    print(f"alice's session has {len(history)} messages: {[m.role for m in history]}")
    runs = load_traces(args.trace)
    print(f"saved {len(runs)} runs to {args.trace}; statuses: {[r.status for r in runs]}")


if __name__ == "__main__":
    asyncio.run(main())
