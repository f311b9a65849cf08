"""The DeBERTa reward-model stage pads its batches to the length buckets of
`jaxstep.data.batching.auto_buckets` with one step axis for the whole run
(`jaxstep.rm.encoding.step_slots`): its jitted train step sees at most one batch shape
per bucket (one compile each, instead of one per new (length, steps) pair), and the
training metrics equal those of a run padded to max_len throughout, since padding is
masked out of the attention, the gathers and the losses."""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from deberta_helpers import deberta_folder  # noqa: E402
from run_helpers import PPO_P, PPO_R, build_tiny_chain, tiny_ppo_config  # noqa: E402
from jaxstep import config_lib  # noqa: E402
from jaxstep.data import batching  # noqa: E402
from jaxstep.metrics import read_metrics  # noqa: E402
from jaxstep.parallel import placement  # noqa: E402
from jaxstep.rm import encoding  # noqa: E402
from jaxstep.rm.labels import StepLabels, StepPreference  # noqa: E402
from jaxstep.stages import reward_model as stage_rm  # noqa: E402

pytestmark = pytest.mark.usefixtures("compilation_cache")

def test_step_slots_by_hand():
    from jaxstep.data.problem import Problem
    q = Problem(question="1 + 1?", steps=("1 + 1 = 2",), answer="2", source="test")
    rec = lambda n: StepLabels(q, tuple(f"s{i}" for i in range(n)), (1.0,) * n, True)  # noqa: E731
    assert encoding.step_slots([rec(1), rec(3)]) == 4
    assert encoding.step_slots([rec(2), rec(5)]) == 8
    assert encoding.step_slots([rec(8)]) == 8
    assert encoding.step_slots([StepPreference(q, ("a",) * 8, "b", "c")]) == 12  # prefix 8 + the alternative
    assert encoding.step_slots([]) == 4


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(deberta_folder(tmp_path_factory.mktemp("deberta_buckets") / "base", seed=0))


def _config(base_folder, max_len, steps=8):
    c = config_lib.base_config("deberta_rm_buckets", "prm")
    c.rm.kind, c.rm.backbone, c.rm.init_from = "prm", "deberta", base_folder
    c.data.max_prompt_len = c.data.max_response_len = max_len // 2
    c.rm.steps, c.rm.batch_size, c.rm.warmup_steps, c.rm.learning_rate = steps, 4, 1, 3e-3
    c.rm.log_every, c.rm.eval_problems, c.rm.eval_batch_size = 1, 0, 8
    c.rm.export = False
    return c


def _record_train_shapes(monkeypatch) -> tuple[list, list]:
    """Wraps `placement.jit_step`: every train-step call's batch shapes, and the jitted functions."""
    calls, jitted = [], []
    make = placement.jit_step

    def jit_step(fn, mesh, rules=None, **kwargs):
        step = make(fn, mesh, rules, **kwargs)

        def call(*args, **kw):
            if len(args) == 2 and isinstance(args[1], dict) and "ids" in args[1]:  # (state, batch)
                calls.append(tuple(sorted((k, tuple(v.shape)) for k, v in args[1].items())))
                if step.jitted not in jitted:
                    jitted.append(step.jitted)
            return step(*args, **kw)
        call.jitted = step.jitted
        return call
    monkeypatch.setattr(placement, "jit_step", jit_step)
    return calls, jitted


def _losses(workdir):
    rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
    return np.array([[r["loss"], r["accuracy"]] for r in rows])


def _check_bucketed_then_padded(c, tmp_path, monkeypatch, loss, max_len) -> set:
    """Runs the stage bucketed, then padded to max_len; returns the bucketed run's lengths."""
    calls, jitted = _record_train_shapes(monkeypatch)
    stage_rm.run(c, str(tmp_path / "bucketed"))
    assert len(calls) == c.rm.steps and len(jitted) == 1
    shapes = set(calls)
    buckets = batching.auto_buckets(max_len)
    assert len(shapes) <= len(buckets), shapes
    lengths = {dict(s)["ids"][-1] for s in shapes}
    steps = {dict(s)["step_ends"][-1] for s in shapes}
    assert lengths <= set(buckets) and len(steps) == 1, shapes  # the step axis never changes
    compiles = jitted[0]._cache_size()

    # The same run padded to max_len (one shape): equal metrics, padding being masked.
    calls.clear()
    jitted.clear()
    transform = encoding.encode_pairs_batch if loss == "bt" else encoding.encode_labeled_batch
    monkeypatch.setattr(encoding, transform.__name__, functools.partial(transform, buckets=None))
    stage_rm.run(c, str(tmp_path / "padded"))
    assert {dict(s)["ids"][-1] for s in calls} == {max_len}
    # (The jitted step may compile more than once per shape as the state's placement
    # settles after the first steps; as often per shape here as in the one-shape run.)
    assert compiles <= len(shapes) * jitted[0]._cache_size()
    bucketed, padded = _losses(tmp_path / "bucketed"), _losses(tmp_path / "padded")
    assert bucketed.shape == padded.shape == (c.rm.steps, 2)
    np.testing.assert_allclose(bucketed, padded, rtol=2e-4, atol=1e-5)
    return lengths


@pytest.mark.slow
def test_deberta_prm_stage_compiles_once_per_length_bucket(tmp_path, base, monkeypatch):
    """Exact labels on samples of a tiny random policy (rows of many lengths), BCE."""
    chain = build_tiny_chain(tmp_path, tiny_ppo_config(), kinds=())
    c = _config(base, PPO_P + PPO_R)
    c.data.max_prompt_len, c.data.max_response_len = PPO_P, PPO_R
    c.rm.max_len = 256  # auto buckets (64, 128, 192, 256): the DeBERTa tokenizer's rows fall in several
    c.rm.generator = chain["sft"]
    c.rm.num_problems, c.rm.samples_per_problem, c.rm.corrupted_per_problem = 16, 2, 1.0
    c.sampler.batch_size = 32
    config_lib.validate(c)
    lengths = _check_bucketed_then_padded(c, tmp_path, monkeypatch, "bce", c.rm.max_len)
    assert len(lengths) >= 2, lengths  # the buckets are used: rows of several lengths


@pytest.mark.slow
def test_deberta_bt_prm_stage_on_prm800k_keeps_one_step_axis(tmp_path, shared_data, base, monkeypatch):
    """Bradley-Terry pairs of PRM800K alternatives (block-causal: step ends in the batch)."""
    c = _config(base, 512)
    c.rm.loss, c.rm.labels, c.rm.prm800k_path = "bt", "prm800k", str(shared_data / "prm800k")
    config_lib.validate(c)
    _check_bucketed_then_padded(c, tmp_path, monkeypatch, "bt", 512)
