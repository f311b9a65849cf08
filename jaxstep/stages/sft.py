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
import time

import jax
import jax.numpy as jnp
import optax

from jaxstep import workdir as workdir_lib
from jaxstep.data import batching, formatting, sources, step_checks
from jaxstep.data.problem import Records
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.truncation import report_truncated_prompts
from jaxstep.evaluation.policy import greedy_eval
from jaxstep.metrics import MetricWriter
from jaxstep.models import build as model_build
from jaxstep.models.logprobs import chunked_token_stats
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import placement
from jaxstep.parallel import rules as rules_lib
from jaxstep.train import loop
from jaxstep.train.optim import learning_rate_schedule, make_optimizer, optimizer_step

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- loss, step

def sft_loss(model, params, batch, logits_chunk: int = 0) -> tuple[jax.Array, dict]:
    """Mean next-token cross-entropy over the target tokens.

    Args:
      batch: `ids` int32 `[batch, time]`, `mask` bool `[batch, time]` (real tokens),
        `loss_mask` bool `[batch, time]` (token t is a target, predicted at t - 1).
      logits_chunk: > 0 runs the LM head over that many positions at a time
        (`jaxstep.models.logprobs.chunked_token_stats`): no `[batch, time, vocab]`
        logits, the same loss.

    Returns:
      (loss, metrics) with float32 `loss`, `token_accuracy`, `target_tokens`.
    """
    ids = batch["ids"]
    if logits_chunk > 0:
        hidden = model.apply({"params": params}, ids, attention_mask=batch["mask"], lm_head=False)
        stats = chunked_token_stats(model.config, params, hidden[:, :-1], ids[:, 1:], logits_chunk,
                                    with_hits=True)
        weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
        count = jnp.maximum(weights.sum(), 1.0)
        hits = stats["hits"].astype(jnp.float32)
        return (-(stats["logprobs"] * weights).sum() / count,
                {"token_accuracy": (hits * weights).sum() / count, "target_tokens": weights.sum()})
    logits = model.apply({"params": params}, ids, attention_mask=batch["mask"])
    logits = logits[:, :-1].astype(jnp.float32)
    targets = ids[:, 1:]
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (ce * weights).sum() / count
    hits = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return loss, {"token_accuracy": (hits * weights).sum() / count, "target_tokens": weights.sum()}


def train_step(model, tx, state: dict, batch: dict, *, microbatch_size: int = 0,
               logits_chunk: int = 0) -> tuple[dict, dict]:
    """One AdamW step on `batch`; `state` = {params, opt_state, step, rng}.
    `microbatch_size` > 0 accumulates gradients over microbatches (weighted by their
    target tokens: the full-batch gradient); `logits_chunk` see `sft_loss`."""
    loss_fn = functools.partial(sft_loss, model, logits_chunk=logits_chunk)
    if microbatch_size <= 0:
        return optimizer_step(loss_fn, tx, state, batch)
    return optimizer_step(loss_fn, tx, state, batch, microbatch_size=microbatch_size,
                          weight_key="target_tokens")


_OPTIMIZER_FIELDS = ("steps", "learning_rate", "end_lr_ratio", "warmup_steps", "weight_decay",
                     "b1", "b2", "grad_clip")


@functools.lru_cache(maxsize=8)
def _optimizer_and_step(model, optimizer_settings: tuple, mesh, rules: tuple, microbatch_size: int = 0,
                        logits_chunk: int = 0):
    """(optimizer, jitted train step), cached so that runs in one process (tests, sweeps,
    a resumed run) with the same model and settings compile the step once."""
    tx = make_optimizer(dict(optimizer_settings))
    step = functools.partial(train_step, model, tx, microbatch_size=microbatch_size,
                             logits_chunk=logits_chunk)
    return tx, placement.jit_step(step, mesh, rules)


def optimizer_and_step(model, sft_config, mesh, rules, *, microbatch_size: int = 0, logits_chunk: int = 0):
    """(optimizer, jitted train step) of the `sft` section's settings (cached)."""
    settings = tuple((name, sft_config[name]) for name in _OPTIMIZER_FIELDS)
    return _optimizer_and_step(model, settings, mesh, rules_lib.normalize_rules(rules),
                               microbatch_size, logits_chunk)


# ----------------------------------------------------------------------------- stage

def run(config, workdir: str, *, stop_after: int | None = None) -> dict:
    """Trains (or resumes, or reuses) the SFT policy in `workdir`; returns the summary.

    Args:
      stop_after: stop after this step as if preempted (saves a checkpoint, writes no
        summary); the next call resumes. For drills and tests.
    """
    if (done := workdir_lib.reuse_if_done(workdir, "sft", config)) is not None:
        return done
    loop.quiet_library_logs()
    started = time.time()
    s = config.sft

    # ============================================================ setup: model, data, state
    init_from = s.init_from or config.model.hf_path
    tokenizer = tokenizer_lib.resolve_tokenizer(config, init_from)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    model, params = model_build.build_model(config, tokenizer, init_from, key=init_key)
    mesh = mesh_lib.make_mesh(config.mesh)
    logger.info("sft: %s model with %.2fM params, %d-token vocabulary", model.config.model_type,
                model_build.count_params(params) / 1e6, len(tokenizer))

    train_problems = sources.load_problems(config, config.data.train_sources, "train")
    # A share of solutions that repeat a step: a policy that sometimes does, as real ones do.
    if s.redundant_fraction > 0:
        train_problems = Records(step_checks.with_redundant_solutions(train_problems, s.redundant_fraction, config.seed),
                                 skipped=train_problems.skipped)
    eval_problems = sources.eval_problems(config, s.eval_limit)
    prompts_truncated = report_truncated_prompts(config, tokenizer, [*train_problems, *eval_problems], "sft")
    max_len = s.max_len or (config.data.max_prompt_len + config.data.max_response_len)
    batch_size = placement.round_batch(s.batch_size, mesh)
    local_batch = batch_size // jax.process_count()
    encode = functools.partial(batching.encode_sft, tokenizer=tokenizer, max_len=max_len,
                               delimiter=config.data.step_delimiter, buckets="auto",
                               template=formatting.config_template(config))
    loader = batching.make_loader(train_problems, local_batch, seed=config.seed,
                                  transform=lambda problems: encode(problems))

    tx, step_fn = optimizer_and_step(model, s, mesh, config.mesh.rules,
                                     microbatch_size=s.get("microbatch_size", 0),
                                     logits_chunk=config.model.get("logits_chunk", 0))
    params = placement.shard_params(params, model, mesh, config.mesh.rules)
    state = placement.place_on_mesh({"params": params, "opt_state": jax.jit(tx.init)(params),
                                     "step": jnp.zeros((), jnp.int32), "rng": train_key}, mesh)
    ckpt = loop.make_checkpointer(config, workdir)
    restored = ckpt.restore_latest(state)
    if restored is not None:
        step, state, extra = restored
        loader.set_state(extra["data"])
        logger.info("sft: resumed from step %d", step)

    # ============================================================ the loop
    tokens = [0]  # tokens trained on since the last metrics line

    def one_step(state, step):
        batch = placement.shard_batch(next(loader), mesh, keys=("ids", "mask", "loss_mask"))
        tokens[0] += int(batch["ids"].shape[0] * batch["ids"].shape[1])
        return step_fn(state, batch)

    def log(step, history, seconds):
        values = loop.mean_values(history)
        values.update(learning_rate=float(learning_rate_schedule(s)(step - 1)),
                      tokens_per_second=tokens[0] / max(seconds, 1e-9))
        tokens[0] = 0
        return values

    writer = MetricWriter(workdir, prefix="sft")
    hooks = loop.Hooks(
        step=one_step, log=log, checkpoint=lambda state: (state, {"data": loader.get_state()}),
        evaluate=lambda state: greedy_eval(model, state["params"], tokenizer, eval_problems, config, mesh),
        postfix=lambda values: {"loss": f"{values['loss']:.3f}"})
    state, step, stopped = loop.train(
        "sft", state, start_step=int(state["step"]), total_steps=s.steps, hooks=hooks, checkpointer=ckpt,
        writer=writer, log_every=s.log_every, eval_every=s.eval_every, stop_after=stop_after)
    if stopped:
        return loop.stopped_summary(step)

    # ============================================================ finish: eval, export, summary
    last_eval = greedy_eval(model, state["params"], tokenizer, eval_problems, config, mesh)
    if last_eval:
        writer.write(step, last_eval)
    writer.close()
    export_path = workdir_lib.export(workdir, model, state["params"], tokenizer) if s.export else ""
    summary = {
        "stage": "sft", "steps": step, "export": export_path,
        "params": model_build.count_params(state["params"]),
        "final_loss": workdir_lib.last_metric(workdir, "loss"),
        "eval_problems": len(eval_problems), **last_eval,
        "data_skipped": sources.skipped_count(train_problems, eval_problems),
        "prompts_truncated": prompts_truncated,
        "seconds": time.time() - started,
    }
    logger.info("sft: done in %.0f s: %s", summary["seconds"], summary)
    return workdir_lib.write_summary(workdir, summary)
