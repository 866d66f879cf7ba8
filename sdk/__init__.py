"""hanlin: an agent-centric SDK for open language models.

The public API is re-exported here. Importing hanlin stays light: pydantic and
pluggy only; runtimes, tools and their heavy libraries load on first use
through the plugin manager.
"""

import os as _os

# torch and llama.cpp share one OpenMP runtime (torch's libgomp) when both load in a process, as they do when an
# agent on the cpu runtime uses the knowledge base's embeddings or a tuned model is run after training. With
# OpenMP's default busy-waiting, each library's idle threads spin against the other's work: llama.cpp decoded
# SmolLM2 at 2.3 tok/s after torch had run, 26.6 tok/s with passive waiting (2-core machine). A user's own
# setting wins; this must be set before either library starts its threads, hence here.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hanlin import checkout as _checkout

_checkout.install()  # in a source checkout, its kernels/ folder must not shadow the PyPI package `kernels`

from hanlin.agent import Agent, RunResult, load_traces
from hanlin.chat_model import Capabilities, ChatModel, Chunk, Completion, Constraint, GenerationParams
from hanlin.errors import (
    ConfigurationError,
    ContextOverflowError,
    HanlinError,
    ModelError,
    ModelNotInstalledError,
    ParseError,
    PluginError,
    ProtocolError,
    ToolError,
    ToolInputError,
)
from hanlin.events import (
    ErrorEvent,
    Event,
    FinalAnswer,
    RunFinished,
    StepStarted,
    TokenDelta,
    ToolCallEvent,
    ToolResultEvent,
    parse_event,
)
from hanlin.hookspecs import hookimpl
from hanlin.loading import load_model, load_protocol, load_tool, load_tools, resolve_model, tune
from hanlin.messages import Message, ToolCall, Usage
from hanlin.plugin_manager import PluginManager
from hanlin.plugin_manager import plugins as get_plugin_manager  # `hanlin.plugins` is the plugins package
from hanlin.protocols import AgentProtocol, RunContext, StepProtocol
from hanlin.scripted import ScriptedModel
from hanlin.specs import ComponentSpec, ModelSpec, RuntimeSpec, ToolSpec
from hanlin.tools import Tool, Toolkit, ToolResult, current_session, current_task, tool, tool_session, tool_task

__version__ = "0.1.0"

__all__ = [
    "Agent", "AgentProtocol", "Capabilities", "ChatModel", "Chunk", "Completion", "ComponentSpec",
    "ConfigurationError", "Constraint", "ContextOverflowError", "ErrorEvent", "Event", "FinalAnswer",
    "GenerationParams", "HanlinError", "Message", "ModelError", "ModelNotInstalledError", "ModelSpec",
    "ParseError", "PluginError", "PluginManager", "ProtocolError", "RunContext", "RunFinished", "RunResult",
    "RuntimeSpec", "ScriptedModel", "StepProtocol", "StepStarted", "TokenDelta", "Tool", "ToolCall",
    "ToolCallEvent", "ToolError", "ToolInputError", "ToolResult", "ToolResultEvent", "ToolSpec", "Toolkit", "Usage",
    "hookimpl", "load_model", "load_protocol", "load_tool", "load_tools", "load_traces", "parse_event",
    "current_session", "current_task", "get_plugin_manager", "resolve_model", "tool", "tool_session", "tool_task",
    "tune",
]
