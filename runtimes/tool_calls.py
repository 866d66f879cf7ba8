"""Tool calls in model text: the formats model families write, one tolerant reader, and the lazy call grammar.

Every runtime and the server go through this module, so a call is read the same way wherever it came from.

Why tolerant: a small model offered tools writes its call in whatever shape its training favoured, not always the
one its template asks for. Qwen2.5-Coder-0.5B, asked through its own hermes template, mostly answers with a fenced
```` ```json ```` block; Llama 3 writes a bare ``{"name": ..., "parameters": ...}``; Mistral an array after
``[TOOL_CALLS]``; InternLM2 wraps it in ``<|action_start|><|plugin|>``. ``parse_tool_calls`` reads them all, with
text around them, several per reply. Only objects naming an offered tool count: any other JSON stays text, and so
does a call cut short, so nothing the model wrote is lost.

Why lazy: constraining the whole reply to "a call" would forbid the plain-text answer that is right when no offered
tool fits. The runtimes decode freely until the text reaches a *trigger* (a call marker such as ``<tool_call>``, or
``{"name": "<an offered tool>"``), then constrain the call with ``call_grammar``: from there it cannot be malformed
or miss a required argument, and a marker can only be followed by an offered tool. When the call is complete the
grammar is switched off again, so text and more calls may follow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hanlin import Capabilities, ConfigurationError, GenerationParams, Message, ToolCall
from hanlin.grammar import gbnf_literal
from hanlin.runtimes.argument_grounding import Evidence, conversation_evidence, ground_calls
from hanlin.runtimes.named_choices import narrowed_tools
from hanlin.runtimes.undated_calls import undated_note

ToolSpecs = Sequence[dict[str, Any]]  # OpenAI-style function specs


def tool_name(spec: dict[str, Any]) -> str:
    """The function name of an OpenAI-style tool spec (``{"type": "function", "function": {...}}`` or bare)."""
    fn = spec.get("function", spec) if isinstance(spec, dict) else {}
    name = fn.get("name") if isinstance(fn, dict) else None
    return name if isinstance(name, str) else ""


# ---- the formats ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallFormat:
    """How one model family writes calls and sees results, for templates that do not render tools themselves.

    ``opener``/``closer`` wrap one call (or, with ``array``, one JSON array of calls); ``args_key`` is the key the
    family uses for the arguments.
    """

    name: str
    opener: str
    closer: str
    args_key: str = "arguments"
    array: bool = False
    result_open: str = "<tool_response>\n"
    result_close: str = "\n</tool_response>"

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        objs = [{"name": c.name, self.args_key: c.arguments} for c in calls]
        if self.array:
            return self.opener + json.dumps(objs, ensure_ascii=False) + self.closer
        return "\n".join(self.opener + json.dumps(o, ensure_ascii=False) + self.closer for o in objs)

    def render_result(self, name: str | None, content: str, is_error: bool = False) -> str:
        label = f"error from {name}" if is_error else (name or "tool")
        return f"{self.result_open}{label}: {content}{self.result_close}"

    def instructions(self, tools: ToolSpecs) -> str:
        """The system text that teaches a model whose template knows no tools how to call them (our wording)."""
        listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
        example = self.render_calls([ToolCall(name="function_name", arguments={"argument": "value"})])
        return (
            "You can use these functions. Each is described by a JSON schema:\n"
            f"{listing}\n"
            "When a function helps, call it by replying with exactly:\n"
            f"{example}\n"
            "using a real function name and its arguments. Function results come back to you in "
            f"{self.result_open.strip() or 'a message'}. When no function fits, answer in plain text."
        )


FORMATS: dict[str, CallFormat] = {
    "hermes": CallFormat("hermes", "<tool_call>\n", "\n</tool_call>"),  # Qwen2.5, Hermes, SmolLM3
    "llama3_json": CallFormat("llama3_json", "", "", args_key="parameters"),  # Llama 3.1-3.3 JSON calls
    "mistral": CallFormat("mistral", "[TOOL_CALLS]", "", array=True,
                          result_open="[TOOL_RESULTS]", result_close="[/TOOL_RESULTS]"),
    "internlm2": CallFormat("internlm2", "<|action_start|><|plugin|>\n", "<|action_end|>", args_key="parameters",
                            result_open="<|interpreter|>\n", result_close=""),
}


def detect_format(template: str | None, style: str | None = None) -> CallFormat:
    """The family's format: the model spec's ``tool_call_style`` when set, else what the chat template mentions."""
    if style:
        if style not in FORMATS:
            raise ConfigurationError(f"unknown tool_call_style {style!r}; known: {', '.join(FORMATS)}")
        return FORMATS[style]
    text = template or ""
    if "[TOOL_CALLS]" in text:
        return FORMATS["mistral"]
    if "<|plugin|>" in text:
        return FORMATS["internlm2"]
    if "<tool_call>" in text:
        return FORMATS["hermes"]
    if "<|python_tag|>" in text or "ipython" in text:
        return FORMATS["llama3_json"]
    return FORMATS["hermes"]  # the best-known format for a template that says nothing


# ---- reading calls --------------------------------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
# Wrappers written right before / after a call; swallowed with it so they do not remain in the text.
_OPENER = re.compile(
    r"(?:<tool_call>|\[TOOL_CALLS\]|<\|action_start\|>\s*<\|plugin\|>|<\|python_tag\|>"
    r"|```[ \t]*(?:json|tool_call|tool_code|tool)?[ \t]*)\s*\Z"
)
_CLOSER = re.compile(r"\A\s*(?:</tool_call>|<\|action_end\|>|```|<\|eom_id\|>)")
_EXPLICIT = ("<tool_call>", "[TOOL_CALLS]", "<|plugin|>", "<|python_tag|>")
_CALL_KEYS = {"name", "arguments", "parameters", "id", "type"}


def _one_call(value: Any, names: set[str], explicit: bool) -> ToolCall | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # {"type": "function", "function": {"name", "arguments"}}
        value = {**value["function"], "id": value.get("id")}
    name = value.get("name")
    if not isinstance(name, str) or not (name in names if names else explicit and name):
        return None
    if not set(value) <= _CALL_KEYS:
        return None
    has_args = "arguments" in value or "parameters" in value
    if not has_args and not explicit:
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    call_id = value.get("id")
    return ToolCall(name=name, arguments=args, **({"id": call_id} if isinstance(call_id, str) and call_id else {}))


def _calls_in(value: Any, names: set[str], explicit: bool) -> list[ToolCall]:
    if isinstance(value, list):
        calls = [_one_call(v, names, explicit) for v in value]
        return calls if calls and all(c is not None for c in calls) else []  # type: ignore[return-value]
    call = _one_call(value, names, explicit)
    return [call] if call else []


def parse_tool_calls(text: str, tools: ToolSpecs = ()) -> tuple[str, list[ToolCall]]:
    """Split a reply into (the text that is not a call, the calls), in any format of ``FORMATS`` or fenced JSON.

    With ``tools`` given, only calls naming one of them count; with none, only calls inside an explicit marker
    (``<tool_call>``, ``[TOOL_CALLS]``, ...) do. Never raises: what cannot be read stays in the text.
    """
    names = {n for n in (tool_name(t) for t in tools) if n}
    calls: list[ToolCall] = []
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        brace = min((p for p in (text.find("{", i), text.find("[", i)) if p >= 0), default=-1)
        if brace < 0:
            break
        try:
            value, end = _DECODER.raw_decode(text, brace)
        except ValueError:
            i = brace + 1
            continue
        except RecursionError:  # nested deeper than json can read: so are the brackets right after it
            i = brace + 1
            while i < n and text[i] in "[{ \n":
                i += 1
            continue
        before = _OPENER.search(text, max(0, brace - 40), brace)
        start = before.start() if before else brace
        explicit = bool(before) and any(m in before.group(0) for m in _EXPLICIT)
        found = _calls_in(value, names, explicit)
        if not found:
            # inside an object a call may still be nested ({"tool_calls": [...]}); an array that is not all calls is data
            i = brace + 1 if isinstance(value, dict) else end
            continue
        after = _CLOSER.match(text[end:])
        end += after.end() if after else 0
        calls.extend(found)
        spans.append((start, end))
        i = end
    if not calls:
        return text, []
    kept, last = [], 0
    for start, end in spans:
        kept.append(text[last:start])
        last = end
    kept.append(text[last:])
    return re.sub(r"\n{3,}", "\n\n", "".join(kept)).strip(), calls


def looks_like_call(text: str, tools: ToolSpecs) -> bool:
    """Whether a reply seems to attempt a call (a marker, or an offered tool's name as a JSON ``name``): what a
    function-calling evaluation counts as a call lost when no call was returned."""
    if any(m in text for m in _EXPLICIT):
        return True
    return any(re.search(r'"name"\s*:\s*"' + re.escape(tool_name(t)) + '"', text) for t in tools if tool_name(t))


# ---- streaming: release text that cannot be the start of a call ----------------------------------------------------

# Text from one of these on may be a call, so it is held back until the reply ends (then parsed whole).
_HOLD = ("<tool_call>", "[TOOL_CALLS]", "<|action_start|>", "<|python_tag|>", "```", '{"', '[{"')


def _compact(text: str) -> str:
    return re.sub(r"(?<=[\[{])\s+", "", text[:64])


class CallStreamFilter:
    """Feed text deltas, get back what may be shown now; from the first possible call on, everything is held."""

    def __init__(self) -> None:
        self.pending = ""
        self.held = False

    def feed(self, delta: str) -> str:
        self.pending += delta
        if self.held:
            return ""
        for p, ch in enumerate(self.pending):
            if ch not in "<[{`":
                continue
            rest = _compact(self.pending[p:])
            if any(rest.startswith(h) for h in _HOLD):
                self.held = True
            elif not any(h.startswith(rest) for h in _HOLD):
                continue
            out, self.pending = self.pending[:p], self.pending[p:]
            return out
        out, self.pending = self.pending, ""
        return out


# ---- the lazy call grammar ------------------------------------------------------------------------------------------

# Where a call starts in free text: an explicit call marker, or a JSON object (alone or opening an array) whose
# "name" is one of the offered tools. A JSON object naming anything else is left free, and so stays text: a small
# model that reaches for a function nobody offered (the irrelevance case) is not forced into calling one that was.
_MARKERS = r"<tool_call>|\[TOOL_CALLS\]|<\|action_start\|>|<\|python_tag\|>|```(?:json|tool_call)[ \t]*\n"


def call_trigger(names: Sequence[str]) -> re.Pattern[str]:
    """The trigger of a reply offered the tools ``names``; the runtimes switch the call grammar on from its
    leftmost match."""
    if not names:
        return re.compile(_MARKERS)
    named = "|".join(re.escape(json.dumps(n)) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf'{_MARKERS}|(?:\[\s*)?\{{\s*"name"\s*:\s*(?:{named})')


# A fence whose calls the trigger may start: JSON, a tool_call block, or one that names no language.
_FENCE = re.compile(r"```([^\n`]*)")
_CALL_FENCES = ("", "json", "tool_call")


def _in_code_block(text: str, pos: int) -> bool:
    """Whether ``pos`` lies inside a fenced block of code (```python, ```bash, ...) opened before it."""
    language = None
    for fence in _FENCE.finditer(text, 0, pos):
        language = fence[1].strip().lower() if language is None else None  # fences alternate: open, close
    return language is not None and language not in _CALL_FENCES


def trigger_start(text: str, trigger: re.Pattern[str] | None = None, since: int = 0) -> int | None:
    """Where the first call at or after ``since`` begins in ``text`` (the grammar is fed the text from there), or
    None. Not inside a block of code: a dict literal in a ```python block is code, not a call. Qwen2.5-Coder-0.5B,
    writing Python for a tooluse question, wrote ``{"type": "function", "function": {"name": "calculator", ...``
    inside its block; the call grammar took over there and held it to a calculator call, whose expression ran into
    zeros until the token limit, three replies in a row (python-03)."""
    for match in (trigger or call_trigger(())).finditer(text, since):
        if not _in_code_block(text, match.start()):
            return match.start()
    return None


def normalize_tool_choice(choice: Any, tools: ToolSpecs) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI ``tool_choice`` as (mode, the tools a call may name): mode is auto, none, required or named."""
    offered = list(tools)
    if choice is None or choice == "auto":
        return "auto", offered
    if choice == "none":
        return "none", []
    if choice in ("required", "any"):
        return "required", offered
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else choice.get("name")
        chosen = [t for t in offered if tool_name(t) == name]
        if not chosen:
            raise ConfigurationError(f"tool_choice names {name!r}, which is not among the offered tools "
                                     f"{[tool_name(t) for t in offered]}")
        return "named", chosen
    raise ConfigurationError(f"tool_choice must be 'auto', 'none', 'required' or {{'type': 'function', 'function': "
                             f"{{'name': ...}}}}, got {choice!r}")


def _class_char(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def _other_name(g: Any, names: Sequence[str]) -> str:
    """A rule for a JSON string that is none of ``names``: a trie of the names that may be left at any point (a
    different character, or ending where no name ends). Unlike a plain string it cannot spell an offered name, so
    an offered tool's arguments are always held to that tool's schema."""
    trie: dict[str, Any] = {}
    for name in names:
        node = trie
        for ch in name:
            node = node.setdefault(ch, {})
        node[""] = {}  # a name ends here
    g.add("other-tail", '[^"\\\\\\x00-\\x1f]{0,64} "\\""')
    count = 0

    def rule(node: dict[str, Any]) -> str:
        nonlocal count
        count += 1
        me = f"other-name{count}"
        children = sorted(c for c in node if c)
        excluded = "".join(_class_char(c) for c in children)
        alternatives = [f'[^"\\\\\\x00-\\x1f{excluded}] other-tail']
        if "" not in node:
            alternatives.append('"\\""')
        alternatives += [f"{gbnf_literal(c)} {rule(node[c])}" for c in children]
        g.add(me, " | ".join(alternatives))
        return me

    return f'"\\"" {rule(trie)}'


def call_grammar(tools: ToolSpecs, fmt: CallFormat, *, forced: bool, parallel: bool = True,
                 max_string_chars: int | None = None, item: bool = False) -> str:
    """GBNF for calls to ``tools``.

    ``forced`` (tool_choice required or named): the reply is calls in ``fmt`` from its first token. Otherwise the
    grammar is the *lazy* one, applied from a trigger on: its root accepts every shape a trigger can open (hermes
    tags, Mistral's array, InternLM2's plugin block, Llama's python tag, a bare object or array); the runtime
    switches it off again when a call is complete, so text and further calls may follow (parallel calls written
    one fence after another). ``parallel=False`` allows exactly one call. ``item``: one call to an offered tool,
    the next item of an array of calls (``call_count`` decides whether one follows and writes the array around it).
    """
    from hanlin.grammar import STEP_STRING_CHARS, GrammarBuilder

    if not tools:
        raise ConfigurationError("a call grammar needs at least one tool")
    g = GrammarBuilder(max_string_chars=max_string_chars or STEP_STRING_CHARS)
    ws = "[ \\t\\n]{0,8}"
    g.add("sp", ws)
    key = '( "\\"arguments\\"" | "\\"parameters\\"" )'
    options = []
    for i, spec in enumerate(tools):
        fn = spec.get("function", spec)
        args = g.schema(fn.get("parameters") or {"type": "object"}, f"args{i}")
        name = gbnf_literal(json.dumps(tool_name(spec)))
        options.append(f'"{{" sp "\\"name\\"" sp ":" sp {name} sp "," sp {key} sp ":" sp {args} sp "}}"')
    if not forced and not item:  # a call naming anything else is written freely and read back as text (irrelevance)
        other_args = g.schema({"type": "object"}, "other-args")
        options.append(f'"{{" sp "\\"name\\"" sp ":" sp {_other_name(g, [tool_name(t) for t in tools])} sp "," sp '
                       f'{key} sp ":" sp {other_args} sp "}}"')
    g.add("call", " | ".join(options))
    g.add("calls", '"[" sp call ( sp "," sp call )* sp "]"' if parallel else '"[" sp call sp "]"')

    def wrapped(opener: str, closer: str, body: str = "call") -> str:
        one = f"{gbnf_literal(opener)} sp {body} sp {gbnf_literal(closer)}" if closer else f"{gbnf_literal(opener)} sp {body}"
        return f"{one} ( sp {one} )*" if parallel else one

    g.add("hermes", wrapped("<tool_call>", "</tool_call>"))
    g.add("mistral", f'"[TOOL_CALLS]" sp ( calls | call )')
    g.add("internlm", wrapped("<|action_start|>", "<|action_end|>", 'sp "<|plugin|>" sp call'))
    g.add("pytag", '"<|python_tag|>" sp call')
    g.add("bare", "call | calls" if parallel else "call")
    # A fence opening JSON frames its calls as an array: after each call the model chooses between "," (another
    # call) and "]", which is where a small model asked for several things writes them all (one fence, one call
    # otherwise). Measured on Qwen2.5-Coder-0.5B: parallel items went from 0 of 8 to 4 of 8 calls-right.
    # Re-measured on the function_calling eval (first 6 items per category, greedy): letting the fence hold a bare
    # object ('( call | calls )') gave parallel 0/6 and parallel_multiple 0/6 against 2/6 and 3/6 with the array,
    # multiple unchanged (3/6); objects one after another ('call ( sp call )*') also 0/6 and 0/6. Unconstrained,
    # the model writes one object and stops: the forced '[' is what makes it write several calls.
    # The same array was tried for a reply that opens with a bare call ('{"name": "<offered>"'), rewritten as the
    # first item of an array (all 157, greedy, cpu): parallel 0.52 -> 0.64 and parallel_multiple 0.29 -> 0.33, but
    # multiple 0.66 -> 0.41 (a second, unasked call to another offered function) and overall 0.64 -> 0.59; decoding
    # the reply again from '[' gave multiple 0.54, overall 0.62. Both were dropped: an unasked call runs an action.
    g.add("fence", f'"```" ( "json" | "tool_call" ) [ \\t]* "\\n" sp {"calls" if parallel else "call"} sp "```"')
    if item:
        g.add("root", "call")
    elif forced:
        root = {"hermes": "hermes", "mistral": "mistral", "internlm2": "internlm", "llama3_json": "call"}[fmt.name]
        g.add("root", root)
    else:
        g.add("root", "( hermes | mistral | internlm | pytag | fence | bare ) sp")  # "}\n" is one token to many models
    return g.render("root")


# ---- one call's plan ------------------------------------------------------------------------------------------------


def call_key(call: ToolCall) -> str:
    """What makes two calls the same call: name and arguments (not the id)."""
    return call.name + json.dumps(call.arguments, sort_keys=True, default=str)


def unique_calls(calls: list[ToolCall]) -> list[ToolCall]:
    """The calls without repeats (same name and arguments): a small model that loops on one call in a reply means
    it once, and running it N times would only repeat its result."""
    seen: set[str] = set()
    out = []
    for call in calls:
        key = call_key(call)
        if key not in seen:
            seen.add(key)
            out.append(call)
    return out


def repeats_a_call(text: str, tools: ToolSpecs) -> bool:
    """Whether the calls in ``text`` repeat one another: the runtimes stop decoding there (see ``unique_calls``)."""
    calls = parse_tool_calls(text, tools)[1]
    return len(unique_calls(calls)) < len(calls)


class ToolReply:
    """The reply side of a call with tools: streams text until a possible call, then parses the held rest."""

    def __init__(self, tools: ToolSpecs, parallel: bool = True) -> None:
        self.tools, self.parallel = list(tools), parallel
        self.filter = CallStreamFilter() if self.tools else None
        self.shown = False  # whether any text has been shown yet

    def feed(self, delta: str) -> str:
        """The part of ``delta`` that may be shown now."""
        shown = self.filter.feed(delta) if self.filter is not None else delta
        self.shown = self.shown or bool(shown)
        return shown

    def add_note(self, text: str, note: str) -> str:
        """``text`` (the reply's rest) followed by ``note`` (lines that each start with a newline), the newline
        left out when the reply has said nothing before it."""
        return text + note if (self.shown or text.strip()) else text + note.lstrip("\n")

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(the held text that is not a call, the calls)."""
        if self.filter is None:
            return "", []
        text, calls = parse_tool_calls(self.filter.pending, self.tools)
        calls = unique_calls(calls)
        if not self.parallel:
            calls = calls[:1]  # parallel_tool_calls=false: at most one call, as OpenAI's API promises
        return text, calls


@dataclass(slots=True)
class ToolPlan:
    """What one generation does about tools: the specs its prompt shows, the grammar from the first token
    (tool_choice required or named) or from the first trigger (auto), and how its reply is read."""

    render_tools: list[dict[str, Any]] | None = None
    callable_tools: list[dict[str, Any]] = field(default_factory=list)
    grammar: str | None = None
    lazy_grammar: str | None = None
    parallel: bool = True
    trigger: re.Pattern[str] | None = None  # where the lazy grammar switches on
    more_calls: str | None = None  # auto with parallel calls: the grammar of one further call (see call_count)
    conversation: Sequence[Message] | None = None  # what calls are grounded in (argument_grounding; None: as written)
    forced: bool = False  # tool_choice required or named: the caller asked for a call, so none is withheld

    evidence: Evidence | None = None  # read from the conversation when a reply first needs it, most never do

    def reply(self) -> ToolReply:
        return ToolReply(self.callable_tools, self.parallel)

    def _evidence(self) -> Evidence:
        if self.evidence is None:
            self.evidence = conversation_evidence(self.conversation or ())
        return self.evidence

    def settle(self, text: str, calls: list[ToolCall]) -> tuple[str, list[ToolCall], str]:
        """(the reply's text, its final calls, text to add to the reply).

        A reply with no call whose calls to names nobody offered are all labels for one offered tool
        (labelled_calls) has those calls. Then optional arguments the conversation never mentions are dropped and
        invented calls withheld, with a note that says what they need (argument_grounding), and calls that drop the
        date a request is about withheld too (undated_calls); then the calls once more without repeats (two calls
        may have differed only in a made-up argument)."""
        if self.conversation is None:
            return text, calls, ""
        if not calls and not self.forced and '"name"' in text:
            from hanlin.runtimes.labelled_calls import labelled_calls  # it reads calls with this module's parser

            text, calls = labelled_calls(text, self.callable_tools, self._evidence())
            if not self.parallel:
                calls = calls[:1]
        if not calls:
            return text, calls, ""
        kept, notes = ground_calls(calls, self.callable_tools, self._evidence(), withhold=not self.forced)
        if not self.forced and (note := undated_note(kept, self.callable_tools, self.conversation)) is not None:
            kept, notes = [], [*notes, note]  # a dated request, a function that gives only the present (undated_calls)
        return text, unique_calls(kept), "".join("\n" + note for note in notes)


def plan_tools(params: GenerationParams, fmt: CallFormat, capabilities: Capabilities,
               messages: Sequence[Message] = ()) -> ToolPlan:
    """The ToolPlan of ``params`` (tools, tool_choice, parallel_tool_calls, ground_arguments) for a runtime with
    ``capabilities``, answering ``messages``.

    A runtime that cannot constrain decoding (transformers) still reads calls; for ``tool_choice`` required or
    named it can only show the model the tools it must call, so there a call is likely, not certain. A caller's
    own ``constraint`` wins over the tool grammar (the calls are still read from its output).
    """
    if not params.tools:
        return ToolPlan()
    mode, callable_tools = normalize_tool_choice(params.tool_choice, params.tools)
    if mode == "none":
        return ToolPlan()
    parallel = params.parallel_tool_calls is not False
    plan = ToolPlan(render_tools=list(params.tools), callable_tools=callable_tools, parallel=parallel,
                    forced=mode in ("required", "named"))
    if params.ground_arguments is not False and messages:
        plan.conversation = messages
    if params.constraint is not None:
        return plan
    can_constrain = "grammar" in capabilities.constraints
    if mode in ("required", "named") and not can_constrain:
        plan.render_tools = callable_tools
        return plan
    if not can_constrain:
        return plan
    # the grammar offers only the choices the conversation names, where it names some (named_choices)
    grammar_tools = callable_tools if plan.conversation is None else narrowed_tools(callable_tools, plan._evidence())
    if mode in ("required", "named"):
        plan.grammar = call_grammar(grammar_tools, fmt, forced=True, parallel=parallel)
    else:
        plan.lazy_grammar = call_grammar(grammar_tools, fmt, forced=False, parallel=parallel)
        plan.trigger = call_trigger([tool_name(t) for t in callable_tools])
        if parallel:
            plan.more_calls = call_grammar(grammar_tools, fmt, forced=False, item=True)
    return plan
