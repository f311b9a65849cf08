"""Stage `sft`: supervised fine-tuning on reference solutions.

    python -m jaxstep.main --config=configs/sft.py --workdir=runs/sft

Next-token cross-entropy on `[bos] prompt solution [eos]` sequences with the loss on
the solution tokens (and the EOS) only; AdamW with linear warmup and cosine decay;
one jitted train step whose batch is sharded over the mesh's data axes. Every
`checkpoint.every_steps` steps (and on SIGTERM) an Orbax checkpoint holds params,
optimizer state, step, RNG key and the data iterator's position, so a restarted run
continues with exactly the batch it would have seen next. Greedy accuracy on a slice
of the eval set every `sft.eval_every` steps and at the end; metrics go to
metrics.jsonl and TensorBoard; the product is `<workdir>/export` (HF folder with the
tokenizer) and `summary.json`.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxstep import checkpoint as checkpoint_lib
from jaxstep.data import batching
from jaxstep.metrics import MetricWriter
from jaxstep.parallel import rules as rules_lib
from jaxstep.train import common

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- optimizer

def learning_rate_schedule(sft_config) -> optax.Schedule:
    """Linear warmup to `learning_rate`, cosine decay to `learning_rate * end_lr_ratio`.

    `sft_config`: the `sft` section, or a dict with the same fields.
    """
    s = sft_config
    warmup = min(s["warmup_steps"], max(s["steps"] - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=s["learning_rate"], warmup_steps=warmup,
        decay_steps=max(s["steps"], warmup + 1), end_value=s["learning_rate"] * s["end_lr_ratio"])


def _decay_mask(params):
    """Weight decay on matrices (kernels, embeddings) only, not on norms and biases."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(sft_config) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay) on the schedule, after global-norm clipping."""
    s = sft_config
    parts = []
    if s["grad_clip"] > 0:
        parts.append(optax.clip_by_global_norm(s["grad_clip"]))
    parts.append(optax.adamw(learning_rate_schedule(s), b1=s["b1"], b2=s["b2"],
                             weight_decay=s["weight_decay"], mask=_decay_mask))
    return optax.chain(*parts)


# ----------------------------------------------------------------------------- loss, step

def sft_loss(model, params, batch) -> tuple[jax.Array, dict]:
    """Mean next-token cross-entropy over the target tokens.

    Args:
      batch: `ids` int32 `[batch, time]`, `mask` bool `[batch, time]` (real tokens),
        `loss_mask` bool `[batch, time]` (token t is a target, predicted at t - 1).

    Returns:
      (loss, metrics) with float32 `loss`, `token_accuracy`, `target_tokens`.
    """
    ids = batch["ids"]
    logits = model.apply({"params": params}, ids, attention_mask=batch["mask"])
    logits = logits[:, :-1].astype(jnp.float32)
    targets = ids[:, 1:]
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (ce * weights).sum() / count
    hits = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return loss, {"token_accuracy": (hits * weights).sum() / count, "target_tokens": weights.sum()}


def train_step(model, tx, state: dict, batch: dict) -> tuple[dict, dict]:
    """One AdamW step on `batch`; `state` = {params, opt_state, step, rng}."""
    (loss, aux), grads = jax.value_and_grad(
        lambda p: sft_loss(model, p, batch), has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                 "rng": jax.random.fold_in(state["rng"], state["step"])}
    return new_state, metrics


_OPTIMIZER_FIELDS = ("steps", "learning_rate", "end_lr_ratio", "warmup_steps", "weight_decay",
                     "b1", "b2", "grad_clip")


@functools.lru_cache(maxsize=8)
def _optimizer_and_step(model, optimizer_settings: tuple, mesh, rules: tuple):
    """(optimizer, jitted train step), cached so that runs in one process (tests, sweeps,
    a resumed run) with the same model and settings compile the step once."""
    tx = make_optimizer(dict(optimizer_settings))
    return tx, common.jit_step(functools.partial(train_step, model, tx), mesh, rules)


def optimizer_and_step(model, sft_config, mesh, rules):
    settings = tuple((name, sft_config[name]) for name in _OPTIMIZER_FIELDS)
    return _optimizer_and_step(model, settings, mesh, rules_lib.normalize_rules(rules))


# ----------------------------------------------------------------------------- stage

def _max_len(config) -> int:
    return config.sft.max_len or (config.data.max_prompt_len + config.data.max_response_len)


def _eval_problems(config):
    if not config.sft.eval_limit:
        return []
    source = common.parse_sources(config.data.eval_sources)[0][0]
    return common.load_source_problems(config, source, "test", config.sft.eval_limit)


def _evaluate(model, params, tokenizer, problems, config, mesh) -> dict[str, float]:
    results = common.decode_problems(
        model, params, tokenizer, problems, max_prompt_len=config.data.max_prompt_len,
        max_new_tokens=config.data.max_response_len, batch_size=config.sampler.batch_size,
        mesh=mesh, rules=config.mesh.rules, greedy=True, progress=False)
    return {"eval_accuracy": float(np.mean([r.correct for r in results])) if results else float("nan"),
            "eval_has_answer": float(np.mean([r.answer is not None for r in results])) if results else float("nan")}


def run(config, workdir: str, *, stop_after: int | None = None) -> dict:
    """Trains (or resumes, or reuses) the SFT policy in `workdir`; returns the summary.

    Args:
      stop_after: stop after this step as if preempted (saves a checkpoint, writes no
        summary); the next call resumes. For drills and tests.
    """
    if common.is_done(workdir):
        logger.info("sft: %s is done; reusing it.", workdir)
        return common.read_summary(workdir)
    common.quiet_library_logs()
    started = time.time()
    s = config.sft
    init_from = s.init_from or config.model.hf_path
    tokenizer = common.get_tokenizer(config, init_from)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    model, params = common.build_model(config, tokenizer, init_from, key=init_key)
    mesh = common.make_mesh(config)
    logger.info("sft: %s model with %.2fM params, %d-token vocabulary", model.config.model_type,
                common.count_params(params) / 1e6, len(tokenizer))

    train_problems = common.load_problems(config, config.data.train_sources, "train")
    eval_problems = _eval_problems(config)
    max_len = _max_len(config)
    batch_size = common.round_batch(s.batch_size, mesh)
    local_batch = batch_size // jax.process_count()
    encode = functools.partial(batching.encode_sft, tokenizer=tokenizer, max_len=max_len,
                               delimiter=config.data.step_delimiter, buckets="auto")
    loader = batching.make_loader(train_problems, local_batch, seed=config.seed,
                                  transform=lambda problems: encode(problems))

    tx, step_fn = optimizer_and_step(model, s, mesh, config.mesh.rules)
    params = common.shard_params(params, model, mesh, config.mesh.rules)
    state = common.place_on_mesh({"params": params, "opt_state": jax.jit(tx.init)(params),
                                  "step": jnp.zeros((), jnp.int32), "rng": train_key}, mesh)
    ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, common.CHECKPOINT_DIR), max_to_keep=config.checkpoint.keep,
        save_interval_steps=config.checkpoint.every_steps)
    restored = ckpt.restore_latest(state)
    if restored is not None:
        step, state, extra = restored
        loader.set_state(extra["data"])
        logger.info("sft: resumed from step %d", step)
    step = int(state["step"])

    writer = MetricWriter(workdir, prefix="sft")
    history: dict[str, list[float]] = {}
    last_eval: dict[str, float] = {}
    tokens_seen, window_start = 0, time.time()
    bar = tqdm(total=s.steps, initial=step, desc="sft", unit="step", dynamic_ncols=True,
               disable=not common.is_main_process())
    postfix: dict[str, str] = {}
    stopped = False
    while step < s.steps:
        batch = common.shard_batch(next(loader), mesh, keys=("ids", "mask", "loss_mask"))
        state, metrics = step_fn(state, batch)
        step += 1
        for k, v in metrics.items():
            history.setdefault(k, []).append(v)
        tokens_seen += int(batch["ids"].shape[0] * batch["ids"].shape[1])
        if step % s.log_every == 0 or step == s.steps:
            values = {k: float(np.mean(jax.device_get(v))) for k, v in history.items()}
            history.clear()
            elapsed = time.time() - window_start
            values.update(learning_rate=float(learning_rate_schedule(s)(step - 1)),
                          tokens_per_second=tokens_seen / max(elapsed, 1e-9))
            tokens_seen, window_start = 0, time.time()
            writer.write(step, values)
            postfix["loss"] = f"{values['loss']:.3f}"
            bar.set_postfix(postfix, refresh=False)
        if eval_problems and s.eval_every and step % s.eval_every == 0 and step < s.steps:
            last_eval = _evaluate(model, state["params"], tokenizer, eval_problems, config, mesh)
            writer.write(step, last_eval)
            postfix["acc"] = f"{last_eval['eval_accuracy']:.2f}"
            bar.set_postfix(postfix, refresh=False)
        ckpt.save(step, state, extra={"data": loader.get_state()})
        bar.update(1)
        if ckpt.should_stop(step) or (stop_after is not None and step >= stop_after):
            ckpt.save(step, state, extra={"data": loader.get_state()}, force=True)
            stopped = step < s.steps
            break
    bar.close()
    if step >= s.steps:  # the final state is always checkpointed
        ckpt.save(step, state, extra={"data": loader.get_state()}, force=True)
    ckpt.close()
    if stopped:
        writer.close()
        logger.info("sft: stopped at step %d; run again to resume.", step)
        return {"stopped_at": step, "done": False}

    if eval_problems:
        last_eval = _evaluate(model, state["params"], tokenizer, eval_problems, config, mesh)
        writer.write(step, last_eval)
    writer.close()
    export_path = common.export(workdir, model, state["params"], tokenizer) if s.export else ""
    summary = {
        "stage": "sft", "steps": step, "export": export_path,
        "params": common.count_params(state["params"]),
        "final_loss": _last_metric(workdir, "loss"),
        "eval_problems": len(eval_problems), **last_eval,
        "seconds": time.time() - started,
    }
    logger.info("sft: done in %.0f s: %s", summary["seconds"], summary)
    return common.write_summary(workdir, summary)


def _last_metric(workdir: str, key: str) -> Any:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    from jaxstep.metrics import read_metrics  # noqa: PLC0415
    values = [row[key] for row in read_metrics(path) if key in row]
    return values[-1] if values else None
