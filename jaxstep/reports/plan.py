"""The figures and the markdown of stage `plan` (`jaxstep.stages.plan`).

`summarize` turns the per-program `jaxstep.parallel.aot.analyze` reports into the plan:
per-call FLOPs and roofline seconds, the seconds of one PPO iteration and the update's
estimated MFU; `markdown` writes plan.md.

How the figures are counted (all per chip):
  * peak bytes: arguments + outputs - donated aliases + temporaries + generated code,
    everything resident at once (the TPU compiler's own HBM check), and `fits` compares
    the larger of that and XLA's heap-simulated peak with the chip's HBM.
  * XLA's cost analysis counts a loop body once, so a program's FLOPs and HBM bytes
    are multiplied by its main loop's trip count (`info["loops"]`: gradient-accumulation
    microbatches; PPO epochs x minibatches). The sampler is estimated analytically
    instead: prefill 2 N B P / chips FLOPs; each of the R decode steps
    max(2 N B / chips / peak, (N bytes + KV cache bytes per chip) / HBM bandwidth),
    the weights read once per step in the compute dtype (FSDP gathers them all).
  * roofline seconds = max(FLOPs / peak FLOP/s, HBM bytes / HBM bandwidth): a lower
    bound (no collectives, no host time).
  * `model.attention = "splash"`: XLA's cost analysis does not see inside the Pallas
    kernel (a custom call), so `splash_flops` adds its FLOPs to the update, SFT,
    decoder reward-model and scorer programs: 4 L H D T_pad per token per forward (both
    products, no credit for causal block skipping), 3 forwards for a training step (4
    with remat); its HBM traffic (q, k, v, out) is already in the operands' bytes.
  * the FLOPs in the roofline: the larger of the compiler's count and, for the update
    and SFT programs, the analytic count with remat's recompute (`model_flops`): XLA's
    count came out at about 2/3 of the analytic one on the 1-7B PPO updates measured.
    The GPU compiler gives no cost analysis: for GPUs the update and SFT rows use the
    analytic count, the sampler its estimate, and the reward-model and scorer rows
    have no FLOPs or roofline ("?").
  * update MFU = model FLOPs / (peak x roofline seconds), model FLOPs per token of
    policy and critic 6 N + 12 L H D T (PaLM, appendix B; N without the embedding
    tables, with the LM head: `matmul_params`), x epochs; an upper bound.
"""
from __future__ import annotations

from typing import Any

from jaxstep import models
from jaxstep.models import shapes
from jaxstep.parallel.aot import GiB
from jaxstep.parallel.gpu_targets import GPUS

# Published HBM bandwidth per chip, bytes/s (Cloud TPU system architecture pages):
# v4 1200 GB/s, v5e 819 GB/s, v5p 2765 GB/s, v6e 1640 GB/s; GPUs from their data sheets.
HBM_BANDWIDTH = {"v4": 1.2e12, "v5e": 8.19e11, "v5p": 2.765e12, "v6e": 1.64e12,
                 **{kind: spec.bandwidth for kind, spec in GPUS.items()}}


def size(b) -> str:
    if b is None:
        return "?"
    return f"{b / GiB:.2f} GiB" if abs(b) >= GiB / 10 else f"{b / 2 ** 20:.1f} MiB"


def _seconds(flops, bytes_, peak, bandwidth):
    if not peak or flops is None:
        return None
    return max(flops / peak, (bytes_ or 0.0) / bandwidth if bandwidth else 0.0)


def _model_dims(config, which: str):
    cfg = shapes.model_config(config, shapes.model_paths(config)[which])
    return cfg


def _sampler_estimate(config, topo, info: dict, params: int, bandwidth) -> dict:
    """Analytic prefill + decode FLOPs and seconds of one rollout (see the module docstring)."""
    import jax.numpy as jnp
    cfg = _model_dims(config, "policy")
    n, B, P, R = topo.num_chips, info["rollout_batch"], info["prompt_len"], info["new_tokens"]
    width = jnp.dtype(config.model.dtype).itemsize
    prefill = 2.0 * params * B * P / n
    step_flops = 2.0 * params * B / n
    kv = 2.0 * cfg.num_layers * B * cfg.num_kv_heads * cfg.head_size * (P + R / 2) * width / n
    step_bytes = params * width + kv
    peak = topo.peak_flops
    out = dict(flops=prefill + R * step_flops, bytes=R * step_bytes)
    if peak:
        out["seconds"] = prefill / peak + R * _seconds(step_flops, step_bytes, peak, bandwidth)
    return out


def matmul_params(cfg, params: int, lm_head: bool) -> int:
    """The parameters a token multiplies through (PaLM's N in 6 N): all of `params` but the
    token embedding table (and OPT's position table), which are gathers, plus the LM
    head's `vocab x embed` when the model has one (a tied head reuses the table, so it
    counts once). `cfg`: the model's `jaxstep.models.ModelConfig` (the critic is counted
    with the policy's: its backbone)."""
    table = cfg.vocab_size * cfg.embed_dim
    positions = (cfg.max_position_embeddings + 2) * cfg.hidden_size if cfg.is_opt else 0
    head = table if (lm_head and cfg.tie_word_embeddings) else 0
    return int(params - table - positions + head)


def splash_flops(config, name: str, info: dict, chips: int) -> float:
    """FLOPs per chip of the splash-attention kernels in one call of program `name` (0
    unless `model.attention == "splash"`; see the module docstring). `info`: the
    program's shapes from the plan stage."""
    if config.model.get("attention", "einsum") != "splash" or name not in ("update", "sft", "rm", "scorer"):
        return 0.0
    from jaxstep.models.attention import SPLASH_BLOCK
    T = info["length"]
    T_pad = -(-T // SPLASH_BLOCK) * SPLASH_BLOCK
    train_passes = 3.0 + (config.model.get("remat", "none") not in ("none", False))
    if name == "update":  # policy (+ critic) trained, x epochs
        runs = [("policy", train_passes * config.ppo.epochs * (2 if info.get("critic") else 1))]
    elif name == "sft":
        runs = [("policy", train_passes)]
    elif name == "rm":
        runs = [("rm", train_passes)]
    else:  # scorer, per chunk x chunks: policy, reference and critic forwards, the reward model's
        runs = [("policy", 3.0 * info.get("loops", 1)), ("rm", 1.0 * info.get("loops", 1))]
    total = 0.0
    for which, passes in runs:
        try:
            cfg = _model_dims(config, which)
        except (ValueError, TypeError):  # not a decoder (a DeBERTa reward model runs einsum)
            continue
        if not hasattr(cfg, "num_kv_heads"):
            continue
        per_token = 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_size * T_pad
        total += passes * per_token * info["batch"] * T / chips
    return total


def summarize(config, topo, mesh_shape: dict, reports: dict[str, dict]) -> dict[str, Any]:
    """The plan dict written to plan.json (see the module docstring for the estimates)."""
    peak, bandwidth = topo.peak_flops, HBM_BANDWIDTH.get(topo.kind)
    for name, rep in reports.items():
        info, loops = rep["info"], rep["info"].get("loops", 1)
        if rep.get("error"):  # did not compile (does not fit)
            rep.update(flops_per_call=None, bytes_per_call=None, roofline_flops_per_call=None,
                       roofline_seconds=None)
            continue
        if name == "sampler":
            params = info.get("params") or _params_of(reports, config)
            est = _sampler_estimate(config, topo, info, params, bandwidth)
            rep.update(flops_per_call=est["flops"], bytes_per_call=est["bytes"],
                       roofline_flops_per_call=est["flops"], roofline_seconds=est.get("seconds"))
        else:
            kernels = splash_flops(config, name, info, topo.num_chips)
            compiler = None if rep["flops"] is None else rep["flops"] * loops + kernels  # None: GPUs
            rep.update(flops_per_call=compiler, kernel_flops_per_call=kernels,
                       bytes_per_call=None if rep["bytes_accessed"] is None else rep["bytes_accessed"] * loops)
            # The step's analytic FLOPs (with remat's recompute) when larger than the
            # compiler's count, which came out below it on the 1-7B PPO updates measured
            # (and the only count for GPUs, whose compiler gives no cost analysis).
            analytic = model_flops(config, name, info, topo.num_chips, recompute=True)
            rep["analytic_flops_per_call"] = analytic
            rep["roofline_flops_per_call"] = max(compiler or 0.0, analytic or 0.0) or None
            rep["roofline_seconds"] = _seconds(rep["roofline_flops_per_call"], rep["bytes_per_call"], peak,
                                               bandwidth)
    run: dict[str, Any] = {}
    ppo_parts = [reports.get(n, {}).get("roofline_seconds") for n in ("sampler", "scorer", "update")]
    if all(s is not None for s in ppo_parts):
        run["seconds_per_ppo_iteration"] = sum(ppo_parts)
        run["ppo_iteration_parts"] = dict(zip(("rollout", "scorer", "update"), ppo_parts))
    # Without the compiler's count (GPUs) the roofline is the analytic count itself: no MFU.
    if "update" in reports and reports["update"].get("roofline_seconds") and reports["update"]["flops"] is not None:
        rep = reports["update"]
        useful = model_flops(config, "update", rep["info"], topo.num_chips)
        run["update_model_flops_per_chip"] = useful
        run["update_mfu_estimate"] = useful / (peak * rep["roofline_seconds"])
    for stage in ("sft", "rm"):
        if reports.get(stage, {}).get("roofline_seconds"):
            run[f"{stage}_seconds_per_step"] = reports[stage]["roofline_seconds"]
    return dict(topology=topo.name, chips=topo.num_chips, hbm_bytes=topo.hbm_bytes, peak_flops=peak,
                hbm_bandwidth=bandwidth, mesh=mesh_shape, remat=config.model.get("remat", "none"),
                logits_chunk=config.model.get("logits_chunk", 0),
                fits=all(r["fits"] for r in reports.values()), programs=reports, run=run)


def model_flops(config, name: str, info: dict, chips: int, recompute: bool = False) -> float | None:
    """Model FLOPs per chip of one call of the training program `name` ("update": policy
    and critic x epochs; "sft": the policy; None for others): tokens x (6 N + 12 L H D T)
    (PaLM, appendix B; N = `matmul_params`). `recompute` adds remat's second forward
    (2 N + 4 L H D T per token) when `model.remat` is not none."""
    if name not in ("update", "sft"):
        return None
    cfg = _model_dims(config, "policy")
    T = info["length"]
    forward_attention = 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_size * T
    extra = recompute and config.model.get("remat", "none") not in ("none", False)

    def per_token(n):
        return 6.0 * n + 3.0 * forward_attention + (2.0 * n + forward_attention if extra else 0.0)
    if name == "sft":
        return info["batch"] * T / chips * per_token(matmul_params(cfg, info["params"], lm_head=True))
    flops = per_token(matmul_params(cfg, info["policy_params"], lm_head=True))
    if info.get("critic"):
        flops += per_token(matmul_params(cfg, info["critic_params"], lm_head=False))
    return info["batch"] * T * config.ppo.epochs / chips * flops


def _params_of(reports, config) -> int:
    for name in ("sft", "update"):
        info = reports.get(name, {}).get("info", {})
        if info.get("params") or info.get("policy_params"):
            return info.get("params") or info["policy_params"]
    return shapes.count_params(models.abstract_params(_model_dims(config, "policy")))


def markdown(plan: dict) -> str:
    """plan.md: one table row per program, then the run's estimates."""
    def num(x, fmt="{:.3g}"):
        return "?" if x is None else fmt.format(x)

    lines = [f"# Plan for {plan['topology']}", "",
             f"{plan['chips']} chips, {size(plan['hbm_bytes'])} HBM each; mesh {plan['mesh']}; "
             f"remat {plan['remat']}; logits_chunk {plan['logits_chunk']}. Bytes are per chip; "
             "peak = arguments + outputs - donated + temporaries + code (the larger of that and "
             "XLA's heap simulation decides `fits`).", "",
             "| program | fits | peak | arguments | outputs | donated | temporaries | code | TFLOP/call | "
             "roofline s | compile s | shapes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in plan["programs"].items():
        shapes = ", ".join(f"{k} {v}" for k, v in r["info"].items() if k not in ("loops",))
        flops = r["roofline_flops_per_call"]  # the count the roofline used
        lines.append(
            f"| {name} | {'yes' if r['fits'] else '**NO**'} | {size(r['peak_bytes'])} | "
            f"{size(r['argument_bytes'])} | {size(r['output_bytes'])} | {size(r['alias_bytes'])} | "
            f"{size(r['temp_bytes'])} | "
            f"{size(r['generated_code_bytes'])} | {num(None if flops is None else flops / 1e12)} | "
            f"{num(r.get('roofline_seconds'))} | {r['compile_seconds']:.0f} | {shapes} |")
    run = plan["run"]
    lines += ["", "## Run estimates (lower bounds on time: roofline, no collectives)", ""]
    if "seconds_per_ppo_iteration" in run:
        parts = ", ".join(f"{k} {v:.3g} s" for k, v in run["ppo_iteration_parts"].items())
        lines.append(f"- PPO iteration: {run['seconds_per_ppo_iteration']:.3g} s ({parts})")
    if "update_mfu_estimate" in run:
        lines.append(f"- PPO update MFU (upper bound): {100 * run['update_mfu_estimate']:.1f}%")
    for stage in ("sft", "rm"):
        if f"{stage}_seconds_per_step" in run:
            lines.append(f"- {stage} step: {run[f'{stage}_seconds_per_step']:.3g} s")
    if "update" in plan["programs"] and "update_mfu_estimate" not in run and plan["peak_flops"]:
        lines.append("- PPO update MFU: no estimate (the compiler gave no FLOP count; the update's "
                     "roofline uses the analytic count)")
    if not run:
        lines.append("- none (no published peak FLOP/s for this topology)" if plan["peak_flops"] is None else
                     "- per program only (the roofline column); the PPO iteration needs the sampler, "
                     "scorer and update programs in one plan")
    for name, r in plan["programs"].items():
        if r.get("error"):
            lines += ["", f"## {name}: does not fit", "", "```", r["error"][:1500], "```"]
    return "\n".join(lines) + "\n"
