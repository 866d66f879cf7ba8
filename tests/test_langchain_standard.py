"""LangChain's own standard unit suites, run against hanlin's adapters.

``ChatModelUnitTests`` checks ``HanlinChatModel`` (wrapped around a ScriptedModel: the unit suite tests the
adapter's construction, parameters and tool/structured-output binding, not a model's answers; the real-model
checks are in test_langchain_interop.py). ``ToolsUnitTests`` checks hanlin tools converted to LangChain tools:
a ``@hanlin.tool`` function and the built-in calculator.

Feature flags declared below, and why:

- ``has_tool_calling`` / ``has_tool_choice`` / ``has_structured_output``: left to the suite, which derives
  them from the class (``bind_tools`` is overridden and takes ``tool_choice``; ``with_structured_output`` is
  overridden): all true.
- ``supports_json_mode``: true. ``with_structured_output(method="json_mode")`` decodes under a JSON-object
  constraint on models that declare JSON-schema constraints (the ScriptedModel here does, as llama.cpp does).
- ``returns_usage_metadata``: true (the default): every answer carries hanlin's token counts.
- image/audio/video/PDF inputs and image/PDF tool messages: false (the defaults): hanlin models read text.
- ``supports_model_override``: false. A HanlinChatModel wraps one loaded model; a per-call ``model=`` naming
  another is refused with a ConfigurationError (tracing still reports the name passed, which the suite checks).

Suite tests that skip, and why (both are the suite's own skips for a feature declared absent):

- ``test_init_from_env``: hanlin models need no API key or environment settings, so no env params are declared.
- ``test_serdes``: ``is_lc_serializable()`` is false; the adapter holds a live model (weights, a KV cache),
  which LangChain's serializer cannot write out.
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import Field

pytest.importorskip("langchain_core", reason="pip install 'hanlin[langchain]'")
pytest.importorskip("langchain_tests", reason="pip install 'hanlin[dev]' (langchain-tests)")

from langchain_core.tools import BaseTool  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests, ToolsUnitTests  # noqa: E402

import hanlin  # noqa: E402
from hanlin import ScriptedModel, load_tool  # noqa: E402
from hanlin.plugins.integrations.langchain import HanlinChatModel, to_langchain_tool  # noqa: E402


@hanlin.tool
def lookup_word(word: str, limit: Annotated[int, Field(ge=1, le=5)] = 1) -> str:
    """Look a word up in a tiny dictionary.

    Args:
        word: the word to look up
        limit: how many senses to return
    """
    senses = {"tea": ["a drink", "a meal"]}
    return "; ".join(senses.get(word, ["unknown"])[:limit])


class TestHanlinChatModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[HanlinChatModel]:
        return HanlinChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": ScriptedModel(["Hello."], name="scripted-unit")}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


class TestHanlinToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self) -> BaseTool:
        return to_langchain_tool(lookup_word)

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"word": "tea", "limit": 2}


class TestHanlinCalculatorUnit(ToolsUnitTests):
    @property
    def tool_constructor(self) -> BaseTool:
        return to_langchain_tool(load_tool("calculator"))

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"expression": "2 * (3 + 4)"}
