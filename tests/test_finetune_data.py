"""Finetuner data: every format read, bad rows named by line, assistant-only labels checked token by token, and
packed training equal to unpacked (loss and gradients) on a tiny llama."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hanlin import ConfigurationError, Message, ModelSpec, ToolCall, get_plugin_manager, hookimpl
from tests.conftest import requires_smollm2

pytestmark = [
    requires_smollm2,
    pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="pip install 'hanlin[tune]'"),
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


TRACE_CALL = ToolCall(id="call_1", name="calculator", arguments={"expression": "6 * 7"})


def trace_row(status: str = "answered") -> dict:
    """A hanlin trace as Agent.save_trace writes it, with the model's view of its last call."""
    seen = [Message.system("You answer with tools."), Message.user("What is 6 * 7?"),
            Message.assistant("Thought: multiply\nAction: calculator\nAction Input: {\"expression\": \"6 * 7\"}"),
            Message.user("Observation: 42"), Message.assistant("Thought: done\nFinal Answer: 42")]
    return {"messages": [m.model_dump(mode="json") for m in seen[1:]], "status": status,
            "model_view": {"messages": [m.model_dump(mode="json", exclude_defaults=True) for m in seen], "tools": None}}


OPENAI_ROW = {"messages": [
    {"role": "user", "content": "What is 6 * 7?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\": \"6 * 7\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "name": "calculator", "content": "42"},
    {"role": "assistant", "content": "6 * 7 = 42."},
]}


@pytest.fixture(scope="module")
def tokenizer(smol_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smol_folder), local_files_only=True)


# ---- records ------------------------------------------------------------------------------------
def test_every_format_is_read(tmp_path: Path) -> None:
    from hanlin.plugins.finetuners.records import ChatRecord, PreferenceRecord, TextRecord, load_records

    path = write_jsonl(tmp_path / "mixed.jsonl", [
        trace_row(), trace_row("gave_up"), OPENAI_ROW,
        {"conversation": [{"system": "Be brief.", "input": "Hi", "output": "Hello!"}, {"input": "Bye", "output": "Bye!"}]},
        {"text": "Plain text for continued pre-training."},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    ])
    loaded = load_records(path)
    kinds = [type(r) for r in loaded.records]
    assert kinds == [ChatRecord, ChatRecord, ChatRecord, TextRecord, PreferenceRecord]
    assert loaded.filtered == 1  # the gave_up trace is left out by default
    trace, openai, xtuner = loaded.records[:3]
    assert trace.messages[0].role == "system" and trace.messages[-1].content.endswith("Final Answer: 42")
    assert openai.messages[1].tool_calls[0].arguments == {"expression": "6 * 7"}
    assert [m.role for m in xtuner.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert loaded.records[3].where == "mixed.jsonl:5"


def test_malformed_rows_are_named_by_line(tmp_path: Path) -> None:
    from hanlin.plugins.finetuners.records import RecordError, load_records

    path = write_jsonl(tmp_path / "bad.jsonl", [
        OPENAI_ROW, "{not json", {"messages": [{"role": "user", "content": "no reply"}]},
        {"messages": [{"role": "wizard", "content": "x"}]}, OPENAI_ROW, ["a list"],
    ])
    with pytest.raises(RecordError) as info:
        load_records(path)
    lines = [line for _, line, _ in info.value.problems]
    assert lines == [2, 3, 4, 6]
    text = str(info.value)
    assert "bad.jsonl:3: the conversation has no assistant turn" in text and "--skip-bad-records" in text
    assert "role" in dict((l, w) for _, l, w in info.value.problems)[4]
    skipped = load_records(path, skip_bad=True)
    assert len(skipped.records) == 2 and len(skipped.skipped) == 4 and "4 malformed skipped" in skipped.summary()


# ---- rendering and labels -----------------------------------------------------------------------
def _targets(renderer, record) -> str:
    from hanlin.plugins.finetuners.render import IGNORE

    sample = renderer.sample(record)[0]
    return renderer.tokenizer.decode([t for t in sample.labels if t != IGNORE])


def test_only_assistant_tokens_are_labelled(tokenizer) -> None:
    from hanlin.plugins.finetuners.records import parse_row
    from hanlin.plugins.finetuners.render import IGNORE, Renderer

    renderer = Renderer(tokenizer, max_length=512)
    record = parse_row(OPENAI_ROW, "auto", "x:1")
    sample = renderer.sample(record)[0]
    assert sample.input_ids == tokenizer(renderer.render_text(record.messages), add_special_tokens=False)["input_ids"]
    # token by token: a label is either IGNORE or the token itself, and labelled tokens are exactly the two replies
    assert all(lab in (IGNORE, tok) for tok, lab in zip(sample.input_ids, sample.labels))
    pieces, current = [], []
    for tok, lab in zip(sample.input_ids, sample.labels):
        if lab == IGNORE:
            if current:
                pieces.append(tokenizer.decode(current))
                current = []
        else:
            current.append(tok)
    if current:
        pieces.append(tokenizer.decode(current))
    # SmolLM2's template knows no tools: the call is written into the reply as the runtimes render it
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6 * 7"}}\n</tool_call>'
    assert pieces == [f"{call}<|im_end|>\n", "6 * 7 = 42.<|im_end|>\n"]
    assert "<tool_response>\ncalculator: 42\n</tool_response>" in tokenizer.decode(sample.input_ids)  # the result is context, not target
    last = Renderer(tokenizer, max_length=512, train_on="last")
    assert _targets(last, record) == "6 * 7 = 42.<|im_end|>\n"


HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{\"name\": \"{{ c.function.name }}\", \"arguments\": "
    "{{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_tool_calls_in_the_templates_own_style(smol_folder) -> None:
    """A Qwen-style template that renders tools: the call is a <tool_call> block inside the labelled reply, the
    tool result and the tool specs are context."""
    from transformers import AutoTokenizer

    from hanlin.plugins.finetuners.records import parse_row
    from hanlin.plugins.finetuners.render import Renderer

    tok = AutoTokenizer.from_pretrained(str(smol_folder), local_files_only=True)
    tok.chat_template = HERMES_TEMPLATE
    spec = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]
    record = parse_row({**OPENAI_ROW, "tools": spec}, "auto", "x:1")
    renderer = Renderer(tok, max_length=512)
    text = renderer.render_text(record.messages, record.tools)
    assert text.startswith("<|im_start|>system\nTools: ") and "<tool_response>\n42\n</tool_response>" in text
    assert _targets(renderer, record) == (
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6 * 7"}}\n</tool_call><|im_end|>\n'
        "6 * 7 = 42.<|im_end|>\n"
    )


def test_react_trace_trains_on_the_protocols_view(tokenizer) -> None:
    from hanlin.plugins.finetuners.records import parse_row
    from hanlin.plugins.finetuners.render import Renderer

    record = parse_row(trace_row(), "auto", "t:1")
    targets = _targets(Renderer(tokenizer, max_length=512), record)
    assert targets.startswith("Thought: multiply\nAction: calculator") and targets.endswith("Final Answer: 42<|im_end|>\n")
    assert "Observation" not in targets


def test_plain_text_is_cut_into_max_length_pieces(tokenizer) -> None:
    from hanlin.plugins.finetuners.records import TextRecord
    from hanlin.plugins.finetuners.render import Renderer

    samples = Renderer(tokenizer, max_length=16).sample(TextRecord("word " * 40, "doc.txt"))
    assert len(samples) >= 3 and all(len(s.input_ids) <= 16 for s in samples)
    assert all(s.labels == s.input_ids for s in samples) and samples[-1].input_ids[-1] == tokenizer.eos_token_id


def test_preference_ids_share_the_prompt(tokenizer) -> None:
    from hanlin.plugins.finetuners.records import parse_row
    from hanlin.plugins.finetuners.render import Renderer

    pair = Renderer(tokenizer, max_length=256).preference(parse_row({"prompt": "2+2?", "chosen": "4", "rejected": "5"},
                                                                     "auto", "p:1"))
    assert tokenizer.decode(pair.prompt_ids).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(pair.chosen_ids) == "4<|im_end|>\n" and tokenizer.decode(pair.rejected_ids) == "5<|im_end|>\n"


def test_config_errors_teach(tmp_path: Path) -> None:
    from hanlin.plugins.finetuners.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: smollm2\ndata: [x.jsonl]\nlearning_rat: 0.1\nbatch_size: 0\n")
    with pytest.raises(ConfigurationError) as info:
        load_config(cfg)
    text = str(info.value)
    assert "learning_rat: unknown setting" in text and "learning_rate" in text and "batch_size" in text
    with pytest.raises(ConfigurationError, match="eval_every needs eval_split"):
        load_config(None, model="m", data=["x"], eval_every=5)


# ---- packing ------------------------------------------------------------------------------------
def tiny_llama(folder: Path, tokenizer_folder: Path, seed: int = 0) -> Path:
    """A 2-layer random-weight llama with SmolLM2's tokenizer: fast enough to train in a test."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("attention", ["varlen", "model"])
def test_packed_equals_unpacked_loss_and_gradients(attention, tmp_path: Path, smol_folder, tokenizer) -> None:
    """Both ways of keeping attention inside a sample: hanlin's varlen attention (what the finetuners use) and
    transformers' own block-diagonal mask built from the position ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from hanlin.plugins.finetuners.losses import token_loss_sum
    from hanlin.plugins.finetuners.packing import collate, pack, unpacked
    from hanlin.plugins.finetuners.records import parse_row
    from hanlin.plugins.finetuners.render import Renderer

    folder = tiny_llama(tmp_path / "tiny", smol_folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    if attention == "varlen":
        from hanlin.plugins.finetuners.varlen_attention import use_varlen_attention

        use_varlen_attention(model)
    renderer = Renderer(tokenizer, max_length=256)
    rows = [OPENAI_ROW, trace_row()] + [
        {"messages": [{"role": "user", "content": "Say " + "very " * n + "long"}, {"role": "assistant", "content": "ok " * (n + 1)}]}
        for n in (1, 7, 20, 3)
    ]
    samples = [s for i, r in enumerate(rows) for s in renderer.sample(parse_row(r, "auto", f"r:{i}"))]
    packed, plain = pack(samples, 256), unpacked(samples)
    assert len(packed) < len(plain)  # several samples share a row
    assert sorted(len(r.input_ids) for r in plain) != [len(r.input_ids) for r in packed]

    def loss_and_grads(row_groups):
        model.zero_grad()
        denominator = sum(r.n_targets for rows in row_groups for r in rows)
        total = 0.0
        for rows in row_groups:
            loss, _ = token_loss_sum(model, collate(rows, tokenizer.pad_token_id or 0))
            (loss / denominator).backward()
            total += float(loss.detach()) / denominator
        return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_p, grads_p = loss_and_grads([packed])
    loss_u, grads_u = loss_and_grads([plain[:3], plain[3:]])  # padded, in two micro-batches
    assert loss_p == pytest.approx(loss_u, rel=1e-5)
    assert grads_p.keys() == grads_u.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_p[name], grads_u[name], rtol=1e-4, atol=1e-6, msg=name)

    # attention really stays inside each sample: a sample's logits are the same alone and packed behind another
    from hanlin.plugins.finetuners.losses import hidden_states

    first, second = samples[2], samples[3]
    both = collate(pack([first, second], 512), 0)
    alone = collate(unpacked([second]), 0)
    with torch.no_grad():
        h_both = hidden_states(model, both)[0, len(first.input_ids):]
        h_alone = hidden_states(model, alone)[0]
    torch.testing.assert_close(h_both, h_alone, rtol=1e-4, atol=1e-5)


def test_a_real_agent_trace_trains_on_what_the_model_saw(tmp_path: Path, tokenizer) -> None:
    """Agent.save_trace -> load_records -> labels: the targets are the model's own ReAct steps, the context is
    ReAct's system prompt (with the tool list) and the real observations."""
    from hanlin import Agent, ScriptedModel, load_tool, load_traces
    from hanlin.plugins.finetuners.records import load_records
    from hanlin.plugins.finetuners.render import Renderer

    model = ScriptedModel(['Thought: multiply\nAction: calculator\nAction Input: {"expression": "6 * 7"}',
                           "Thought: done\nFinal Answer: 42"])
    result = Agent(model, tools=[load_tool("calculator")], protocol="react").run("What is 6 * 7?")
    path = result.save_trace(tmp_path / "traces.jsonl")
    assert load_traces(path)[0].model_view == result.model_view
    record = load_records(path).records[0]
    assert record.messages[0].role == "system" and "calculator" in record.messages[0].content
    assert record.messages[-2].content.startswith("Observation: 42")  # the real tool's result
    full = tokenizer.decode(Renderer(tokenizer, max_length=1024).sample(record)[0].input_ids)
    assert "- calculator:" in full and "Final Answer: 42" in full
    targets = _targets(Renderer(tokenizer, max_length=1024), record)
    assert targets == ('Thought: multiply\nAction: calculator\nAction Input: {"expression": "6 * 7"}<|im_end|>\n'
                       "Thought: done\nFinal Answer: 42<|im_end|>\n")


class _BaseModelPlugin:
    """Registers a base model (``chat_template=False``, as gemma3-270m is) whose tokenizer carries a chat template."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @hookimpl
    def register_models(self, register) -> None:
        register(ModelSpec(name="tiny-base-with-template", format="hf", locate=lambda: self.folder,
                           installed=lambda: True, chat_template=False))


def test_training_renders_as_serving_decides(tmp_path: Path, smol_folder) -> None:
    """Template or plain layout, tool roles and call format: one decision (``prompt_layout``) for the runtime that
    serves a model and the renderer that trains it. A base model whose tokenizer carries a template trains plain."""
    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.finetuners.data import prepare
    from hanlin.plugins.finetuners.model_setup import load_base
    from hanlin.plugins.finetuners.render import Renderer
    from hanlin.runtimes.hf_prompt import HFPrompt

    folder = tiny_llama(tmp_path / "tiny", smol_folder)  # SmolLM2's tokenizer: a template that knows no tools
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]
    asked = [Message.system("Be brief."), Message.user("What is 6 * 7?")]
    for chat_template in (True, False):
        spec = ModelSpec(name="m", format="hf", locate=lambda: folder, installed=lambda: True,
                         chat_template=chat_template)
        served = HFPrompt(spec, folder)
        trained = Renderer(served.tokenizer, spec=spec)
        for offered in (None, tools):
            assert trained.render_text(asked, offered, generation_prompt=True) == served.render(asked, offered)

    # the trainer's path: the model name resolves to its spec, and the samples come out in the plain layout
    data = write_jsonl(tmp_path / "d.jsonl", [OPENAI_ROW])
    cfg = load_config(None, model="tiny-base-with-template", data=[str(data)], method="lora", output_dir=str(tmp_path))
    with get_plugin_manager().registered(_BaseModelPlugin(folder), name="tiny-base-with-template"):
        base = load_base(cfg)
        sample = prepare(cfg, base.tokenizer, base.spec).samples[0]
    text = base.tokenizer.decode(sample.input_ids)
    assert text.startswith("User: What is 6 * 7?\nAssistant:") and "<|im_start|>" not in text, text
