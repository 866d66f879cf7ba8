"""The plan: a graph of sub-questions the planner grows one typed call at a time.

Every refusal is a ``PlanError`` whose ``kind`` and message the planner reads as its observation: a parent must
already exist when a node names it (so the graph is acyclic by construction, and a node naming itself is the one
cycle that can be written), ids are unique, and the graph is bounded in nodes and depth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from hanlin.plugins.apps.research.events import RejectKind

ID = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,39}$")
NodeStatus = Literal["pending", "running", "answered", "failed"]


class PlanError(Exception):
    def __init__(self, kind: RejectKind, message: str, node_id: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.node_id = kind, message, node_id


@dataclass(slots=True)
class Node:
    id: str
    question: str
    depends_on: list[str]
    depth: int
    status: NodeStatus = "pending"
    answer: str = ""  # global citation numbers
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    cited: list[int] = field(default_factory=list)
    short: str = ""  # the searcher's short answer, without citations (what a child node's query names)
    quote: str = ""  # the sentence the searcher quoted for it, "[n] ..." in its own numbering


class PlanGraph:
    def __init__(self, *, max_nodes: int = 6, max_depth: int = 3) -> None:
        self.max_nodes, self.max_depth = max_nodes, max_depth
        self.nodes: dict[str, Node] = {}

    def add(self, node_id: Any, question: Any, depends_on: Any = None) -> Node:
        """Check a planner's ``add_node`` call and add the node; any problem raises ``PlanError``."""
        if not isinstance(node_id, str) or not ID.match(node_id):
            raise PlanError("malformed", f"node id {node_id!r} is not usable: use a short name of letters, digits, "
                                         "'_' or '-' starting with a letter, e.g. \"license\"")
        if not isinstance(question, str) or len(question.split()) < 2:
            raise PlanError("malformed", f"node {node_id!r} needs a question of a few words, got {question!r}",
                            node_id)
        if depends_on is None:
            depends_on = []
        if isinstance(depends_on, str):  # a single parent written as a string
            depends_on = [d.strip() for d in depends_on.split(",") if d.strip()]
        if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
            raise PlanError("malformed", f"depends_on of node {node_id!r} must be a list of node ids, got "
                                         f"{depends_on!r}", node_id)
        if node_id in self.nodes:
            raise PlanError("duplicate_id", f"a node with id {node_id!r} already exists (question: "
                                            f"{self.nodes[node_id].question!r}); choose another id", node_id)
        if node_id in depends_on:
            raise PlanError("cycle", f"node {node_id!r} cannot depend on itself: that is a cycle; name only nodes "
                                     "added before it", node_id)
        unknown = [d for d in depends_on if d not in self.nodes]
        if unknown:
            known = ", ".join(self.nodes) or "none yet"
            raise PlanError("unknown_parent", f"node {node_id!r} depends on {unknown}, which do not exist (nodes: "
                                              f"{known}); add the parent first, then this node", node_id)
        if len(self.nodes) >= self.max_nodes:
            raise PlanError("too_many_nodes", f"the plan already has {self.max_nodes} nodes, the most allowed; "
                                              "call wait() for answers, then finish(answer)", node_id)
        depth = 1 + max((self.nodes[d].depth for d in depends_on), default=0)
        if depth > self.max_depth:
            raise PlanError("too_deep", f"node {node_id!r} would be at depth {depth}, deeper than the allowed "
                                        f"{self.max_depth}; depend on fewer or shallower nodes", node_id)
        node = Node(id=node_id, question=" ".join(question.split()), depends_on=list(dict.fromkeys(depends_on)),
                    depth=depth)
        self.nodes[node_id] = node
        return node
