"""An example runtime plugin: a model and the runtime that serves it.

It shows the two other registrations a third party can make (``register_models``
and ``register_runtimes``) without needing weights: the runtime serves a
scripted ReAct model that counts words with this package's ``word_count`` tool
and answers from the tool's observation. After installing the package,

    hanlin run "How many words are in 'the quick brown fox'?" --model demo-scripted --tool word_count

runs a whole agent loop through the entry-point path. The model is a script,
not a language model: it proves the plumbing, never that a model works.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hanlin import ConfigurationError, ModelSpec, RuntimeSpec, ScriptedModel, hookimpl
from hanlin.messages import Message

FORMAT = "scripted"  # a format only this runtime serves, so no other runtime picks the model up
_OBSERVATION = re.compile(r"Observation:\s*(-?\d+)")


def _reply(messages: list[Message], params: Any) -> str:
    """Call word_count on the quoted text of the question, then answer from the observation."""
    last = messages[-1].content
    seen = _OBSERVATION.search(last)
    if seen:
        # Saying which question this is in the conversation makes session memory (and /reset) visible.
        asked = sum(1 for m in messages if m.role == "user" and not m.content.startswith("Observation:"))
        return (f"Thought: the tool counted the words (question {asked} of this conversation).\n"
                f"Final Answer: The text has {seen.group(1)} word{'' if seen.group(1) == '1' else 's'}.")
    question = next(m.content for m in reversed(messages) if m.role == "user")
    quoted = re.search(r"'([^']*)'|\"([^\"]*)\"", question)
    text = next(g for g in quoted.groups() if g is not None) if quoted else question
    return f"Thought: I should count the words with the tool.\nAction: word_count\nAction Input: {json.dumps({'text': text})}"


def _load(spec: ModelSpec, path: Path | None, **config: Any) -> ScriptedModel:
    if config:
        raise ConfigurationError(f"the scripted-demo runtime takes no options, got {sorted(config)}; leave them out")
    return ScriptedModel(_reply, name=spec.name, native_tools=False, constraints=frozenset())


@hookimpl
def register_models(register: Any) -> None:
    register(
        ModelSpec(
            name="demo-scripted",
            format=FORMAT,  # type: ignore[arg-type]  # a plugin-defined format, served by scripted-demo below
            locate=lambda: Path(__file__),
            installed=lambda: True,
            description="A scripted ReAct model that counts words with word_count (a demo, not a language model).",
            provenance="scripted in hanlin_demo_plugin.scripted; no weights",
        )
    )


@hookimpl
def register_runtimes(register: Any) -> None:
    register(
        RuntimeSpec(
            name="scripted-demo",
            formats=frozenset({FORMAT}),
            load=_load,
            available=lambda: None,
            description="Serves the demo-scripted model from hanlin-demo-plugin.",
        )
    )
