"""`hanlin eval --ray`: a real local Ray (2 CPUs, no dashboard) runs the runner's partitions on actors.

One Ray for the module (it takes seconds to start). The runner logic is checked with a scripted model whose worker
process kills itself once mid-partition (Ray must restart it and retry; the scores must not change); the real
check runs SmolLM2 on two datasets and compares every output with the local run's.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from hanlin import ScriptedModel
from hanlin.plugins.evaluators.cache import PredictionCache
from hanlin.plugins.evaluators.runner import EvalSettings, evaluate_dataset
from hanlin.plugins.evaluators.user_dataset import load_user_dataset
from tests.conftest import requires_llama, requires_smollm2

ray = pytest.importorskip("ray")
from hanlin.plugins.evaluators.ray_exec import evaluate_on_ray  # noqa: E402

DATA = Path(__file__).parent / "data" / "eval"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def local_ray():
    # workers are new processes: they must import this module (the model factory lives here) from the checkout
    # (set for the workers only while Ray runs: a checkout on PYTHONPATH made later tests' `pip install` fail)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved) if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _answer(messages, params) -> str:
    """Right on capitals about France and Germany, a fixed wrong letter elsewhere: a mixed score to compare."""
    text = messages[-1].content
    if "Compute" in text:  # the arithmetic file: every answer there is 42
        return "#### 42"
    return {"France": "The answer is B.", "Germany": "The answer is A."}.get(
        next((k for k in ("France", "Germany") if k in text), ""), "The answer is D.")


def crashing_model(marker: str) -> ScriptedModel:
    """Scripted answers; the first process to reach its third call (no marker yet) dies there, as a worker can."""
    calls = []

    def reply(messages, params) -> str:
        calls.append(1)
        if len(calls) == 3 and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(17)
        return _answer(messages, params)

    return ScriptedModel(reply, name="ray-scripted")


def test_a_worker_killed_mid_run_is_retried_and_the_cache_is_shared(local_ray, tmp_path: Path) -> None:
    datasets = [load_user_dataset(DATA / "capitals.jsonl"), load_user_dataset(DATA / "arithmetic.json")]
    local = [evaluate_dataset(ScriptedModel(_answer, name="ray-scripted"), d, EvalSettings()) for d in datasets]
    marker = tmp_path / "crashed"
    cache = tmp_path / "predictions.sqlite"
    on_ray = evaluate_on_ray(functools.partial(crashing_model, str(marker)), datasets, EvalSettings(),
                             cache_path=cache, workers=2, chunk_size=2)
    assert marker.exists(), "no worker died: the retry path was not exercised"
    for mine, theirs in zip(on_ray, local, strict=True):
        assert mine.metrics["accuracy"].value == theirs.metrics["accuracy"].value
        assert [(p.id, p.output, p.correct) for p in mine.predictions] == \
               [(p.id, p.output, p.correct) for p in theirs.predictions]
    assert 0 < on_ray[0].metrics["accuracy"].value < 1
    # the same cache, read by a plain local run: nothing is asked again
    again = ScriptedModel(_answer, name="ray-scripted")
    shared = PredictionCache(cache)
    rerun = [evaluate_dataset(again, d, EvalSettings(), shared) for d in datasets]
    shared.close()
    assert again.calls == [] and [r.cached for r in rerun] == [len(d.items()) for d in datasets]


@requires_llama
@requires_smollm2
def test_smollm2_on_two_datasets_scores_as_the_local_run(local_ray, tmp_path: Path) -> None:
    from hanlin import load_model

    datasets = [load_user_dataset(DATA / "capitals.jsonl"), load_user_dataset(DATA / "arithmetic.json")]
    settings = EvalSettings(limit=2, max_tokens=12)
    model = load_model("smollm2-135m-instruct", runtime="cpu", n_threads=1)
    try:
        local = [evaluate_dataset(model, d, settings) for d in datasets]
    finally:
        model.close()
    factory = functools.partial(load_model, "smollm2-135m-instruct", runtime="cpu", n_threads=1)
    on_ray = evaluate_on_ray(factory, datasets, settings, cache_path=tmp_path / "p.sqlite", workers=2, chunk_size=2)
    for mine, theirs in zip(on_ray, local, strict=True):
        assert [p.output for p in mine.predictions] == [p.output for p in theirs.predictions]
        assert mine.metrics["accuracy"].value == theirs.metrics["accuracy"].value
        assert mine.model_calls == len(theirs.predictions)


def test_what_ray_does_not_distribute_is_refused_before_a_model_loads() -> None:
    from hanlin.errors import ConfigurationError
    from hanlin.plugins.evaluators.agent_eval import ToolUseDataset
    from hanlin.plugins.evaluators.ray_exec import check_rayable

    capitals = load_user_dataset(DATA / "capitals.jsonl")
    check_rayable([capitals], EvalSettings())
    with pytest.raises(ConfigurationError, match="likelihood mode runs locally"):
        check_rayable([capitals], EvalSettings(mode="likelihood"))
    with pytest.raises(ConfigurationError, match="'tooluse' .* runs on the local path only"):
        check_rayable([capitals, ToolUseDataset()], EvalSettings())
