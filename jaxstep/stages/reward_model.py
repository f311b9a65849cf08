"""Stages `orm` and `prm`: reward models on a decoder backbone with a scalar head.

    python -m jaxstep.main --config=configs/train_prm.py --workdir=runs/prm
    python -m jaxstep.main --config=configs/train_orm.py --workdir=runs/orm

A reward model is `jaxstep.models.ScalarModel` (the generator's decoder without its LM
head, plus a Dense(1) head) initialised from a generator export folder or an HF model.
The ORM is trained on the logit at the last token of a solution, the PRM on the logit
at the last token of every step (`jaxstep.rewards.scoring` reads them the same way).
With `rm.backbone = "deberta"` it is instead a DeBERTa-v2/v3 encoder from `rm.init_from`
with an ORM (pooled [CLS]) or block-causal PRM head (`jaxstep.models.deberta_heads`),
reading text with its own tokenizer (steps end at their last character's token,
`jaxstep.data.step_offsets`), exported as an HF classification folder:

  * `orm`: N sampled solutions per training problem labelled by final-answer
    correctness (or pre-labelled solutions from `rm.solutions_path`), binary
    cross-entropy.
  * `prm`: step labels from `rm.labels` = exact | prm800k | montecarlo
    (`jaxstep.rm.labels`, `jaxstep.rm.montecarlo`), loss `rm.loss` = bce (per step, soft labels allowed) or
    bt (Bradley-Terry `-log sigmoid(r_chosen - r_rejected)` between alternatives of the
    same step).

PRM options for small backbones (see the README's ablation): `rm.likelihood_feature`
adds w * (the step's log-likelihood under the backbone's own LM head) to the head's
logit (`jaxstep.models.heads`), `rm.lm_loss_weight` adds the next-token loss on correct
steps, and `rm.corrupted_per_problem` / `rm.references_per_problem` with
`rm.corruption_kinds` add minimal pairs of synthetic problems. The report also gives
flaw detection on minimal pairs of the held-out problems (`jaxstep.rm.evaluation.flaw_detection`).

Training data are built once and kept in `<workdir>/data/` (Monte-Carlo labels are
cached per finished solution). Training: AdamW with warmup and cosine decay, one
jitted step sharded over the mesh, Orbax checkpoints (params, optimizer, step, data
position) with resume. Then `jaxstep.rm.evaluation` evaluates on held-out samples of
the generator (step/outcome AUC, best-of-N) and writes `report.md`. The product is
`<workdir>/export`: an HF causal-LM folder of the backbone (with the generator's LM
head, unchanged unless the likelihood feature trained it) plus `score.safetensors` and `reward_model.json`;
`jaxstep.models.reward_io.load_reward_model(path)` reads it back in one call.
"""
from __future__ import annotations

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp

from jaxstep import workdir as workdir_lib
from jaxstep.data import batching, formatting, sources, synthetic
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.truncation import report_truncated_prompts
from jaxstep.metrics import MetricWriter, mark_undefined
from jaxstep.models import build as model_build
from jaxstep.models import reward_io
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import placement
from jaxstep.reports import reward_model as report
from jaxstep.rewards.losses import batch_loss
from jaxstep.rm import backbones, dataset, encoding
from jaxstep.rm import evaluation as rm_eval
from jaxstep.rm import labels as labels_lib
from jaxstep.train import loop
from jaxstep.train.optim import learning_rate_schedule, make_optimizer, optimizer_step

logger = logging.getLogger(__name__)


def train_step(model, tx, loss: str, state: dict, batch: dict, lm_weight: float = 0.0, *,
               microbatch_size: int = 0) -> tuple[dict, dict]:
    """One AdamW step; `state` = {params, opt_state, step, rng}. `microbatch_size` > 0
    accumulates gradients over microbatches weighted by their targets (steps, outcomes
    or pairs): the full-batch gradient of the BCE / Bradley-Terry mean (with
    `lm_weight` > 0 the next-token term is weighted by the same counts, an
    approximation)."""
    loss_fn = functools.partial(_loss, model, loss=loss, lm_weight=lm_weight)
    if microbatch_size <= 0:
        return optimizer_step(loss_fn, tx, state, batch)
    return optimizer_step(loss_fn, tx, state, batch, microbatch_size=microbatch_size, weight_key="targets")


def _loss(model, params, batch, *, loss, lm_weight):
    return batch_loss(model, params, batch, loss, lm_weight)


def run(config, workdir: str, *, stop_after: int | None = None) -> dict:
    """Trains (or resumes, or reuses) the ORM/PRM in `workdir`; returns the summary.

    Args:
      stop_after: stop after this training step as if preempted (checkpoint saved, no
        summary); the next call resumes. For drills and tests.
    """
    if (done := workdir_lib.reuse_if_done(workdir, config.stage, config)) is not None:
        return done
    started = time.time()
    kind = dataset.stage_kind(config)
    r = config.rm

    # ============================================================ setup: generator, data, model
    mesh = mesh_lib.make_mesh(config.mesh)
    root = jax.random.key(config.seed)
    k_init, k_data, k_train = (jax.random.fold_in(root, i) for i in (101, 102, 103))
    gen_path = dataset.generator_path(config, workdir)
    generator = dataset.load_generator(config, gen_path) if gen_path else None
    init_path = r.init_from or gen_path
    deberta = r.get("backbone", "decoder") == "deberta"
    if deberta:  # an encoder ORM/PRM with its own tokenizer (jaxstep.rm.backbones)
        model, params, tokenizer = backbones.deberta_reward_model(config, kind, k_init)
        base_params = lm_head = None
    elif generator is not None and init_path == gen_path:
        base_model, base_params, tokenizer = generator
    else:
        tokenizer = generator[2] if generator is not None else tokenizer_lib.resolve_tokenizer(config, init_path)
        if not init_path:
            logger.warning("%s: no generator or rm.init_from; the backbone is the tiny model of "
                           "config.model with random weights", kind)
        base_model, base_params = model_build.build_model(config, tokenizer, init_path, key=k_init)
    data = dataset.build_data(config, workdir, kind, generator, mesh, k_data)
    loss = r.loss if kind == "prm" else "bce"

    boundary_ids = (reward_io.boundary_token_ids(tokenizer, config.data.step_delimiter)
                    if r.likelihood_feature and kind == "prm" else ())
    if not deberta:
        model, params, lm_head = reward_io.reward_model_from_generator(
            base_model, base_params, k_init, boundary_ids, remat=model_build.remat_of(config))
    del base_params
    logger.info("%s: %.2fM params, %d training records (%s loss)", kind,
                model_build.count_params(params) / 1e6, len(data.train), loss)

    max_len = dataset.max_len(config)
    batch_size = placement.round_batch(r.batch_size, mesh)
    local_batch = batch_size // jax.process_count()
    train_records = data.train
    while len(train_records) < max(local_batch * jax.process_count(), jax.process_count()):
        train_records = train_records + data.train  # tiny data sets (tests): repeat
    template = formatting.config_template(config)  # the policy's prompt format (data.prompt_template)
    # DeBERTa: steps end at their last character's token (jaxstep.data.step_offsets); the
    # block-causal PRM also takes every row's step ends; a chat template only if it has one.
    positions = {"step_positions": getattr(model, "step_positions", "delimiter")} if deberta else {}
    if deberta:  # one step axis for every batch: the train step compiles once per length bucket
        positions["max_steps"] = encoding.step_slots(train_records)
    with_steps = bool(getattr(model, "needs_step_ends", False))
    if deberta and template == formatting.CHAT and not getattr(tokenizer, "chat_template", None):
        template = formatting.PROMPT_TEMPLATE
    # Prompts the generator's sampler cut (or would cut) at data.max_prompt_len, in its tokens.
    prompts_truncated = report_truncated_prompts(
        config, generator[2] if generator is not None else tokenizer,
        [x.problem for x in (*data.train, *data.eval_records, *data.eval_samples)], kind,
        template=formatting.config_template(config) if generator is not None else template)
    if loss == "bt":
        transform = functools.partial(encoding.encode_pairs_batch, tokenizer=tokenizer, max_len=max_len,
                                      delimiter=config.data.step_delimiter, template=template, **positions,
                                      **({"with_steps": True} if with_steps else {}))
        keys = ("ids", "mask", "target", "pair_mask") + (("step_ends", "step_mask") if with_steps else ())
    else:
        transform = functools.partial(encoding.encode_labeled_batch, tokenizer=tokenizer, max_len=max_len,
                                      kind=kind, delimiter=config.data.step_delimiter, template=template,
                                      **positions)
        keys = ("ids", "mask", "step_ends", "step_mask", "labels", "label_mask", "lm_mask")
    loader = batching.make_loader(train_records, local_batch, seed=config.seed, transform=transform)

    tx = make_optimizer(r)
    params = placement.shard_params(params, model, mesh)
    state = placement.place_on_mesh({"params": params, "opt_state": tx.init(params),
                                     "step": jnp.zeros((), jnp.int32), "rng": k_train}, mesh)
    ckpt = loop.make_checkpointer(config, workdir)
    restored = ckpt.restore_latest(state)
    if restored is not None:
        _, state, extra = restored
        state = placement.place_on_mesh(state, mesh)
        loader.set_state(extra["data"])
        logger.info("%s: resumed from step %d", kind, int(state["step"]))

    # ============================================================ the loop
    lm_weight = float(r.lm_loss_weight) if loss == "bce" and getattr(model, "boundary_ids", ()) else 0.0
    step_fn = placement.jit_step(functools.partial(train_step, model, tx, loss, lm_weight=lm_weight,
                                                   microbatch_size=r.get("microbatch_size", 0)), mesh)
    schedule = learning_rate_schedule(r)

    def log(step, history, seconds):
        values = loop.mean_values(history)
        values["learning_rate"] = float(schedule(step - 1))
        values["steps_per_second"] = len(history) / max(seconds, 1e-9)
        return values

    writer = MetricWriter(workdir, prefix=kind)
    hooks = loop.Hooks(
        step=lambda state, step: step_fn(state, placement.shard_batch(next(loader), mesh, keys=keys)),
        log=log, checkpoint=lambda state: (state, {"data": loader.get_state()}),
        postfix=lambda values: {"loss": f"{values['loss']:.3f}", "acc": f"{values['accuracy']:.2f}"})
    state, step, stopped = loop.train(
        kind, state, start_step=int(state["step"]), total_steps=r.steps, hooks=hooks, checkpointer=ckpt,
        writer=writer, log_every=r.log_every, stop_after=stop_after)
    if stopped:
        return loop.stopped_summary(step)
    train_seconds = time.time() - started

    # ============================================================ finish: export, evaluation, report
    export_path = ""
    metadata = {"labels": data.info.get("labels"), "loss": loss, "steps": step,
                "generator": gen_path, "init_from": init_path,
                "prompt_template": config.data.prompt_template}
    if r.export:
        export_path = reward_io.save_reward_model(
            os.path.join(workdir, workdir_lib.EXPORT_DIR), model, state["params"], tokenizer, kind,
            lm_head=lm_head, metadata=metadata)

    started_eval = time.time()
    reward_models = {kind.upper(): (model, state["params"], kind)}
    for other in (p.strip() for p in r.compare_with.split(",") if p.strip()):
        m, p, _, k = reward_io.load_reward_model(other)
        reward_models[f"{k.upper()} ({os.path.basename(os.path.normpath(other))})"] = (m, p, k)
    synthetic_eval = synthetic.is_synthetic(sources.parse_sources(config.data.eval_sources)[0][0])
    flaw_pairs = labels_lib.flaw_pairs(sources.eval_problems(config, r.eval_problems) if synthetic_eval else [],
                                       jax.random.fold_in(root, 105), rule=r.label_rule)
    evaluation = rm_eval.evaluate(
        reward_models, tokenizer, samples=data.eval_samples, records=data.eval_records, flaw_pairs=flaw_pairs,
        num_per_problem=r.best_of_n, greedy_accuracy=data.greedy_accuracy,
        greedy_correct=data.info.get("greedy_correct"), max_len=max_len,
        batch_size=r.eval_batch_size, mesh=mesh, delimiter=config.data.step_delimiter,
        key=jax.random.fold_in(root, 104), template=template)
    if placement.is_main_process():
        report.write_report(os.path.join(workdir, "report.md"), evaluation,
                            title=f"{kind.upper()} ({data.info.get('labels')} labels, {loss} loss)",
                            info=data.info, metrics_path=os.path.join(workdir, "metrics.jsonl"))
    # Numbers the held-out data cannot define (NaN) are written as null and named, not as NaN.
    undefined = "undefined on the held-out data (one class, no step labels or no samples)"
    writer.write(step, mark_undefined({f"eval_{k}": v for k, v in evaluation["flat"].items()}, undefined))
    writer.close()
    summary = {"stage": kind, "steps": step, "export": export_path, "labels": data.info.get("labels"),
               "loss": loss, "params": model_build.count_params(state["params"]),
               "final_loss": workdir_lib.last_metric(workdir, "loss"), "data": data.info,
               "prompts_truncated": prompts_truncated,
               "eval": mark_undefined(evaluation["flat"], undefined), "train_seconds": train_seconds,
               "eval_seconds": time.time() - started_eval, "seconds": time.time() - started}
    logger.info("%s: done in %.0f s: %s", kind, summary["seconds"], evaluation["flat"])
    return workdir_lib.write_summary(workdir, summary)
