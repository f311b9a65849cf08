"""Launching stages as a user does (`python -m jaxstep.main ...` in a subprocess) and
comparing two finished runs bitwise; shared by the fault-resume and distributed tests."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np

from jaxstep import config_lib
from jaxstep.checkpoint import Checkpointer
from jaxstep.metrics import read_metrics
from jaxstep.models import build as model_build
from jaxstep.models import reward_io
from jaxstep.data import batching, formatting
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep import workdir as workdir_lib
from jaxstep.rl import rollout as rollout_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 300

# The tiny decoder the runs train (SFT from scratch; PPO's policy and PRM).
TINY_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
              "intermediate_size": 64}

# Metric keys that measure wall time, not the training numerics.
TIMING_SUFFIXES = ("_seconds", "per_second")


def command(config_file: str, workdir, overrides: dict) -> list[str]:
    """The user's command line for `config_file` with `--config.<k>=<v>` overrides."""
    return ([sys.executable, "-m", "jaxstep.main", f"--config={config_file}", f"--workdir={workdir}"]
            + [f"--config.{k}={v}" for k, v in overrides.items()])


def child_env(devices: int, cache_dir=None, **extra: str) -> dict:
    """Environment of a launched run: `devices` CPU devices, offline, and optionally a
    persistent compilation cache (a cached executable is the one compilation produces)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    env.update(extra)
    return env


class Launch:
    """One launch of a command in `cwd` (the repository root unless given); stdout/stderr
    go to `<log_dir>/<name>.{out,err}`."""

    def __init__(self, cmd, env, log_dir, name: str, cwd=REPO_ROOT):
        log_dir = pathlib.Path(log_dir)
        self.out, self.err = log_dir / f"{name}.out", log_dir / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)

    def log(self) -> str:
        return self.err.read_text()

    def tail(self, n: int = 4000) -> str:
        return self.log()[-n:]

    def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"launch ran over {timeout} s:\n{self.tail()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def logged_steps(workdir) -> list[int]:
    """Steps of the lines in `<workdir>/metrics.jsonl` (a half-written last line ignored)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return steps


def finalized_checkpoints(workdir) -> list[int]:
    """Checkpoint steps Orbax has finalized (its temporary folders are named otherwise)."""
    folder = pathlib.Path(workdir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


# The PPO stage tests' sizes: prompt and response lengths, step slots.
PPO_P, PPO_R, PPO_S = 64, 24, 8


def rollout_from_texts(problems, texts, tokenizer, finished=True):
    """A Rollout whose responses are given texts (tokenized, + EOS), as `sample` returns."""
    ids = tokenizer_lib.special_ids(tokenizer)
    enc = batching.encode_prompts(problems, tokenizer, PPO_P)
    tokens = np.full((len(texts), PPO_R), ids["pad"], np.int32)
    lengths = []
    for b, text in enumerate(texts):
        row = tokenizer(text, add_special_tokens=False)["input_ids"] + ([ids["eos"]] if finished else [])
        row = row[:PPO_R]
        tokens[b, :len(row)] = row
        lengths.append(len(row))
    steps = batching.batch_step_ends(tokens, tokenizer, max_steps=PPO_S)
    n = len(texts)
    return rollout_lib.Rollout(
        problems=list(problems), prompt_ids=enc["ids"], prompt_mask=enc["mask"], tokens=tokens,
        logprobs=np.zeros((n, PPO_R), np.float32), lengths=np.array(lengths, np.int32), texts=list(texts),
        correct=np.array([i % 2 == 0 for i in range(n)]), has_answer=np.ones(n, bool),
        finished=np.full(n, finished), step_ends=steps["step_ends"], step_mask=steps["step_mask"],
        num_steps=steps["num_steps"])


def tiny_ppo_config(scheme="prm_dense", steps=2):
    """A PPO config on the tiny decoder: 8 rollouts of 64 + 24 tokens, `steps` iterations."""
    c = config_lib.base_config("test_ppo", "ppo")
    c.data.num_train = 200
    c.data.num_eval = 8
    c.data.max_prompt_len = PPO_P
    c.data.max_response_len = PPO_R
    tiny_model(c)
    c.ppo.scheme = scheme
    c.ppo.steps = steps
    c.ppo.rollout_batch = 8
    c.ppo.minibatches = 1
    c.ppo.max_steps = PPO_S
    c.ppo.learning_rate = 1e-3
    c.ppo.eval_limit = 8
    c.checkpoint.every_steps = 1
    return c


def build_tiny_chain(root, config, kinds=("prm", "orm")) -> dict:
    """The products of the stages before PPO, as a chained run lays them out: a tiny
    random policy `<root>/sft/export` (the tokenizer resolved from `config`) and, for
    each of `kinds`, a reward model `<root>/<kind>/export` built from it (key i + 1, its
    score head scaled so that scores sit away from 0.5). Returns root, config, tokenizer,
    model, params and the export paths under "sft" and each kind."""
    root = pathlib.Path(root)
    tokenizer = tokenizer_lib.resolve_tokenizer(config)
    model, params = model_build.build_model(config, tokenizer)
    chain = dict(root=str(root), config=config, tokenizer=tokenizer, model=model, params=params)
    chain["sft"] = workdir_lib.export(str(root / "sft"), model, params, tokenizer)
    for i, kind in enumerate(kinds):
        rm, rm_params, head = reward_io.reward_model_from_generator(model, params, jax.random.key(i + 1))
        rm_params["score"]["kernel"] = rm_params["score"]["kernel"] * 50  # scores away from 0.5
        chain[kind] = reward_io.save_reward_model(str(root / kind / "export"), rm, rm_params, tokenizer,
                                                  kind, lm_head=head)
    return chain


def build_ppo_inputs(root) -> dict:
    """A tiny random policy (`<root>/sft/export`) and a PRM from it (`<root>/prm/export`),
    as `--config.ppo.policy` / `--config.ppo.reward_model` overrides."""
    config = config_lib.base_config("tiny_ppo_inputs", "ppo")
    config.data.num_train = 64
    config.model.update(TINY_MODEL)
    chain = build_tiny_chain(root, config, kinds=("prm",))
    return {"ppo.policy": chain["sft"], "ppo.reward_model": chain["prm"]}


def read_checkpoint(workdir, step: int):
    """(state as nested dicts of numpy arrays, extra) of checkpoint `step` in
    `<workdir>/checkpoints`, whichever process layout wrote it."""
    ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints", handle_sigterm=False, async_save=False)
    try:
        assert step in ckpt.all_steps(), f"{workdir}: no checkpoint {step} in {ckpt.all_steps()}"
        return ckpt.restore_to_host(step)
    finally:
        ckpt.close()


def assert_same_run(unbroken, other, final_step: int, what: str) -> None:
    """The export, the final checkpoint (whole state and extra) and every metric line
    (timings aside) of run `other` equal those of run `unbroken` bitwise."""
    from safetensors.numpy import load_file
    a = load_file(os.path.join(unbroken, "export", "model.safetensors"))
    b = load_file(os.path.join(other, "export", "model.safetensors"))
    assert a.keys() == b.keys(), what
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), \
            f"{what}: exported {key} differs (max |diff| {np.abs(a[key] - b[key]).max()})"

    (state_a, extra_a), (state_b, extra_b) = (read_checkpoint(w, final_step) for w in (unbroken, other))
    leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(state_a)
    leaves_b, tree_b = jax.tree_util.tree_flatten_with_path(state_b)
    assert tree_a == tree_b, what
    for (path, x), (_, y) in zip(leaves_a, leaves_b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), \
            f"{what}: final checkpoint leaf {jax.tree_util.keystr(path)} differs"
    assert extra_a == extra_b, f"{what}: data position / guard state differ: {extra_a} vs {extra_b}"

    def line_id(row):  # a step can have several lines (training, eval)
        return row["step"], frozenset(row)

    reference = {line_id(r): r for r in read_metrics(os.path.join(unbroken, "metrics.jsonl"))}
    rows = read_metrics(os.path.join(other, "metrics.jsonl"))
    assert {line_id(r) for r in rows} == set(reference), f"{what}: different metric lines"
    for row in rows:  # lines logged twice (past the last checkpoint, then again) too
        want = reference[line_id(row)]
        for key, value in want.items():
            if not key.endswith(TIMING_SUFFIXES):
                assert row[key] == value, f"{what}: step {row['step']} {key}: {row[key]} != {value}"


def long_prompts(problems, tokenizer, max_len: int) -> int:
    """An independent count of the distinct plain-template prompts longer than `max_len`
    tokens (BOS included): the tokenizer on the formatted text, no jaxstep encoding."""
    bos = 1 if tokenizer.bos_token_id is not None else 0
    questions = {p.question for p in problems}
    return sum(bos + len(tokenizer(formatting.PROMPT_TEMPLATE.format(question=q), add_special_tokens=False)
                         ["input_ids"]) > max_len for q in questions)


def tiny_model(c, max_position_embeddings: int | None = None):
    """Shrinks `c.model` to the tests' decoder: hidden 32, 2 layers, 2 heads (1 KV head)."""
    c.model.hidden_size = 32
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.num_kv_heads = 1
    c.model.intermediate_size = 64
    if max_position_embeddings:
        c.model.max_position_embeddings = max_position_embeddings
    return c
