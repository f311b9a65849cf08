"""Stage `pipeline`, the main job: SFT -> reward model -> PPO -> evals -> report.

    python -m jaxstep.main --config=configs/ppo_prm_max.py [--workdir=runs/main]

Runs every stage of the chain in its own folder under the workdir, with the config's
sections (only `stage` and the paths between stages change):

  <workdir>/sft        stage sft (unless ppo.policy is given)
  <workdir>/<orm|prm>  stage orm/prm on samples of the SFT policy (unless ppo.reward_model is given)
  <workdir>/orm        also, with ppo.outcome_coef > 0 (PRM + ORM), the ORM (unless ppo.outcome_reward_model is given)
  <workdir>/ppo        stage ppo with ppo.scheme (ppo_seed1, ppo_seed2, ... with pipeline.seeds > 1)
  <workdir>/eval_sft   greedy eval of the SFT policy on pipeline.eval_limit test problems
  <workdir>/eval_ppo   the same for the PPO policy (eval_ppo_seed1, ...)
  <workdir>/report.md  accuracy before/after with standard errors (and the paired
                       difference), reward and KL curves (PNG), reward-hacking statistics,
                       stage timings
  <workdir>/summary.json

A stage whose folder holds summary.json is reused, not recomputed, so an interrupted
chain continues where it stopped (and a stage killed midway resumes from its Orbax
checkpoint), when the folder's recorded run_config.json matches the stage's config; a
changed field stops the chain at the first stage it changes, with the list of
differences (`jaxstep.workdir`: another workdir, or `--config.overwrite=True`). The
chain's own summary and report are made again from its stages on every run
(`jaxstep.workdir.write_chain_summary`).
`jaxstep.stages.sweep` runs the same pieces for several schemes.
"""
from __future__ import annotations

import copy
import logging
import time
from typing import Any

from jaxstep import paths, workdir as workdir_lib
from jaxstep.evaluation.hacking import eval_hacking_stats
from jaxstep.evaluation.policy import SAMPLES_FILE, read_samples
from jaxstep.evaluation.stats import accuracy_with_error, format_pm, mean_and_se, paired_difference, sampled_correct
from jaxstep.parallel import placement
from jaxstep.reports.chain import write_report
from jaxstep.rewards.shaping import reward_model_kind
from jaxstep.stages import evaluate, ppo, reward_model as reward_model_stage, sft
from jaxstep.train import loop

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- stages

def stage_config(config, stage: str):
    """A copy of `config` for one stage of the chain (same sections, `stage` set)."""
    c = copy.deepcopy(config)
    c.stage = stage
    return c


class Chain:
    """Runs (or reuses) the stages of a chain under one root folder and times them."""

    def __init__(self, config, root: str):
        self.config = config
        self.root = paths.absolute(root)
        self.timings: dict[str, dict[str, Any]] = {}

    def _run(self, name: str, module, config) -> dict:
        workdir = paths.join(self.root, name)
        reused = workdir_lib.is_done(workdir) and not workdir_lib.is_stale(workdir, config)
        started = time.time()
        summary = module.run(config, workdir)
        if not summary or summary.get("done") is False:
            raise RuntimeError(f"pipeline: stage {config.stage} in {workdir} stopped before the end "
                               "(preempted?); run the same command again to resume it")
        self.timings[name] = {"stage": config.stage, "reused": reused,
                              "seconds": 0.0 if reused else time.time() - started}
        logger.info("pipeline: %s %s (%.0f s)", name, "reused" if reused else "done",
                    self.timings[name]["seconds"])
        return summary

    def sft(self) -> str:
        """The SFT policy folder: `ppo.policy`, else the export of `<root>/sft`."""
        if self.config.ppo.policy:
            return self.config.ppo.policy
        summary = self._run("sft", sft, stage_config(self.config, "sft"))
        return summary.get("export") or paths.join(self.root, "sft", workdir_lib.EXPORT_DIR)

    def reward_model(self, kind: str, policy: str, given: str = "") -> str:
        """The reward-model folder: `given`, else the export of `<root>/<kind>`, trained on
        samples of `policy`."""
        if given:
            return given
        c = stage_config(self.config, kind)
        c.rm.kind = kind
        c.rm.generator = policy
        summary = self._run(kind, reward_model_stage, c)
        return summary.get("export") or paths.join(self.root, kind, workdir_lib.EXPORT_DIR)

    def ppo(self, name: str, *, scheme: str, policy: str, reward_model: str, seed: int,
            advantage: str | None = None, outcome_reward_model: str = "", train_sources: str = "") -> dict:
        """PPO in `<root>/<name>` with `scheme`, `seed` and (if given) `advantage`, the
        second reward model (an ORM, used when `ppo.outcome_coef` > 0) and the prompt mix
        `train_sources` (else `ppo.train_sources`)."""
        c = stage_config(self.config, "ppo")
        c.ppo.scheme = scheme
        if advantage:
            c.ppo.advantage = advantage
        if train_sources:
            c.ppo.train_sources = train_sources
        c.ppo.policy = policy
        c.ppo.reward_model = reward_model
        if outcome_reward_model:
            c.ppo.outcome_reward_model = outcome_reward_model
        c.seed = seed
        return self._run(name, ppo, c)

    def evaluate(self, name: str, model: str, label: str) -> tuple[dict, list[dict]]:
        """Greedy eval of `model` in `<root>/<name>`; returns (summary, samples rows)."""
        c = stage_config(self.config, "eval")
        c.eval.model = model
        c.eval.label = label
        c.eval.limit = self.config.pipeline.eval_limit
        c.eval.batch_size = self.config.pipeline.eval_batch_size
        summary = self._run(name, evaluate, c)
        rows = read_samples(paths.join(self.root, name, SAMPLES_FILE))
        return summary, rows


# ----------------------------------------------------------------------------- stage

def ppo_run_result(chain: Chain, name: str, summary: dict, eval_name: str, sft_rows, delimiter) -> dict:
    """Evaluates one finished PPO run and compares it with the SFT rows."""
    eval_summary, rows = chain.evaluate(eval_name, summary["export"], f"PPO {name}")
    return {"name": name, "workdir": paths.join(chain.root, name), "scheme": summary.get("scheme"),
            "eval": accuracy_with_error(rows), "difference": paired_difference(sft_rows, rows),
            "sampled_difference": paired_difference(sft_rows, rows, sampled_correct),
            "by_source": by_source(sft_rows, rows),
            "hacking_eval": eval_hacking_stats(rows, delimiter), "first": summary.get("first", {}),
            "last": summary.get("last", {}), "eval_workdir": paths.join(chain.root, eval_name),
            "kl_coef_final": summary.get("kl_coef_final")}


def sampled_accuracy(rows: list[dict]) -> float | None:
    """The mean accuracy of the rows' sampled responses (eval.pass_k), None without samples."""
    shares = [x for x in map(sampled_correct, rows) if x is not None]
    return float(sum(shares) / len(shares)) if shares else None


def by_source(sft_rows: list[dict], rows: list[dict]) -> dict[str, dict]:
    """Per eval set (the rows' `source`), when there are several: the accuracy and the
    greedy and sampled paired differences to SFT on that set's problems; {} for one set."""
    names = list(dict.fromkeys(r["source"] for r in rows))
    if len(names) < 2:
        return {}
    out = {}
    for name in names:
        before = [r for r in sft_rows if r["source"] == name]
        after = [r for r in rows if r["source"] == name]
        out[name] = {"eval": accuracy_with_error(after), "difference": paired_difference(before, after),
                     "sampled_difference": paired_difference(before, after, sampled_correct)}
    return out


def run(config, workdir: str) -> dict:
    """Runs (or reuses) the whole chain in `workdir`; returns the summary."""
    started = time.time()
    loop.quiet_library_logs()
    chain = Chain(config, workdir)
    p, delimiter = config.ppo, config.data.step_delimiter
    kind = reward_model_kind(p.scheme)
    policy = chain.sft()
    reward_model = chain.reward_model(kind, policy, p.reward_model)
    # PRM + ORM in one reward (ppo.outcome_coef > 0): the ORM is trained in <workdir>/orm too.
    outcome_model = chain.reward_model("orm", policy, p.outcome_reward_model) if p.outcome_coef > 0 else ""
    _, sft_rows = chain.evaluate("eval_sft", policy, "SFT")
    runs = []
    for i in range(max(1, config.pipeline.seeds)):
        suffix = "" if i == 0 else f"_seed{i}"
        summary = chain.ppo(f"ppo{suffix}", scheme=p.scheme, policy=policy, reward_model=reward_model,
                            seed=config.seed + i, outcome_reward_model=outcome_model)
        runs.append(ppo_run_result(chain, f"ppo{suffix}", summary, f"eval_ppo{suffix}", sft_rows, delimiter))
    improvement = mean_and_se([r["eval"]["accuracy"] - accuracy_with_error(sft_rows)["accuracy"] for r in runs])
    if len(runs) == 1:  # one run: its paired s.e. (the s.e. over runs needs two)
        improvement = (improvement[0], runs[0]["difference"]["se"])
    result = {"stage": "pipeline", "scheme": p.scheme, "policy": policy, "reward_model": reward_model,
              "outcome_reward_model": outcome_model,
              "eval_n": len(sft_rows), "sft": accuracy_with_error(sft_rows), "ppo_runs": runs,
              "sft_sampled_accuracy": sampled_accuracy(sft_rows),
              "improvement": {"mean": improvement[0], "se": improvement[1]},
              "hacking": {"sft": eval_hacking_stats(sft_rows, delimiter)},
              "timings": chain.timings, "seconds": time.time() - started}
    if placement.is_main_process():
        result["report"] = write_report(chain.root, result, delimiter)
        d, ds = runs[0]["difference"], runs[0].get("sampled_difference") or {}
        sampled = (f"; sampled PPO - SFT {format_pm(ds['diff'], ds['se'], signed=True)}" if ds.get("n") else "")
        print(f"\nSFT accuracy {format_pm(result['sft']['accuracy'], result['sft']['se'])}; "
              f"PPO accuracy {format_pm(runs[0]['eval']['accuracy'], runs[0]['eval']['se'])}; "
              f"PPO - SFT {format_pm(d['diff'], d['se'], signed=True)} (greedy, paired, n={d['n']}){sampled}; "
              f"{result['seconds']:.0f} s. Report: {result['report']}\n", flush=True)
    return workdir_lib.write_chain_summary(workdir, config, result)
