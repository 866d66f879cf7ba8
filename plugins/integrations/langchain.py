"""LangChain interop: hanlin tools and models in LangChain, LangChain tools in hanlin.

Needs langchain-core (``pip install 'hanlin[langchain]'``); importing this module without it raises an
ImportError that says so. It is not a built-in plugin: nothing of LangChain loads until you import it.

A hanlin tool in LangChain, and back::

    import hanlin
    from hanlin.plugins.integrations.langchain import from_langchain_tool, to_langchain_tool

    @hanlin.tool
    def add(a: int, b: int) -> int:
        \"\"\"Add two integers.\"\"\"
        return a + b

    lc_add = to_langchain_tool(add)              # a LangChain BaseTool, args_schema = add's arguments model
    lc_add.invoke({"a": 2, "b": 40})             # '42'

    from langchain_core.tools import tool

    @tool
    def shout(text: str) -> str:
        \"\"\"Upper-case a text.\"\"\"
        return text.upper()

    agent = hanlin.Agent("smollm2-135m-instruct", [from_langchain_tool(shout)])

A hanlin model as a LangChain chat model::

    from hanlin.plugins.integrations.langchain import HanlinChatModel

    chat = HanlinChatModel(model="smollm2-135m-instruct", temperature=0, max_tokens=64)
    chat.invoke("Name three colours.").content
    for chunk in chat.stream("Name three colours."):
        print(chunk.content, end="")
    chat.bind_tools([lc_add], tool_choice="add").invoke("What is 2 + 40?").tool_calls
    chat.with_structured_output(MyPydanticModel).invoke("...")   # decoded under the model's JSON schema
    chat.close()                                                    # frees a model it loaded by name

A failing hanlin tool raises ``ToolException`` inside LangChain; its ``handle_tool_error`` is ``True`` by
default, so the error text comes back as the tool's output (``status="error"``) rather than an exception, the
way hanlin agents show errors to the model. Pass ``handle_tool_error=False`` to ``to_langchain_tool`` to raise.
"""

from __future__ import annotations

from hanlin.plugins.integrations.langchain_tools import (
    INSTALL_HINT,
    HanlinLangChainTool,
    LangChainNotInstalledError,
    LangChainTool,
    from_langchain_tool,
    to_langchain_tool,
)
from hanlin.plugins.integrations.langchain_chat import HanlinChatModel, to_hanlin_messages, to_langchain_messages

__all__ = [
    "INSTALL_HINT",
    "HanlinChatModel",
    "HanlinLangChainTool",
    "LangChainNotInstalledError",
    "LangChainTool",
    "from_langchain_tool",
    "to_hanlin_messages",
    "to_langchain_messages",
    "to_langchain_tool",
]
