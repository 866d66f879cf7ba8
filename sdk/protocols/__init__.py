"""What an agent protocol is, and the run context it drives.

The concrete protocols (react, rewoo, tools) are plugins in ``hanlin.plugins``;
the sdk owns only the contract and the shared machinery.
"""

from hanlin.protocols.base import Action, AgentProtocol, Final, ParsedStep, StepProtocol
from hanlin.protocols.context import RunContext, RunOptions

__all__ = ["Action", "AgentProtocol", "Final", "ParsedStep", "RunContext", "RunOptions", "StepProtocol"]
