"""Stage `sweep`: several reward schemes (x advantage estimators) on the same SFT policy
and reward models.

    python -m jaxstep.main --config=configs/sweep.py [--workdir=runs/sweep]
    python -m jaxstep.main --config=configs/sweep.py --config.sweep.schemes=orm,prm_max,clip_delta
    python -m jaxstep.main --config=configs/sweep.py --config.sweep.schemes=prm_min,clip_delta \
        --config.sweep.estimators=gae,grpo,grpo_process --config.ppo.samples_per_prompt=4

The paper's experiment in miniature. In the workdir (every stage reused when its
summary.json exists and its run_config.json matches, `jaxstep.workdir`):

  sft/                  the SFT policy (or `ppo.policy`)
  prm/, orm/            the reward models the schemes need, trained on samples of that
                        SFT policy (or `sweep.prm` / `sweep.orm`)
  eval_sft/             greedy eval of the SFT policy
  ppo_<scheme>/         one PPO run per scheme with the critic's GAE (ppo_<scheme>_seed1, ...
                        with sweep.seeds > 1)
  ppo_<scheme>_<est>/   the same with each other estimator of `sweep.estimators`
                        (critic-free: grpo, rloo, dr_grpo, reinforce_pp, grpo_process);
                        every run uses the same ppo.samples_per_prompt
  eval_<scheme>[_<est>]/ greedy eval of each final policy on the same test problems
  report.md             one comparison table: accuracy (with standard error and the paired
                        difference to SFT), reward, KL, reward-hacking statistics and
                        seconds per PPO iteration per scheme and estimator; reward/KL
                        curves of all runs (PNG)
  summary.json
"""
from __future__ import annotations

import logging
import statistics
import time

from jaxstep import paths, workdir as workdir_lib
from jaxstep.evaluation.hacking import eval_hacking_stats
from jaxstep.evaluation.stats import accuracy_with_error
from jaxstep.metrics import read_metrics
from jaxstep.parallel import placement
from jaxstep.reports.ppo import training_rows
from jaxstep.reports.sweep import comparison_table, scheme_rows, write_report
from jaxstep.rewards.shaping import SCHEMES, reward_model_kind
from jaxstep.rl.advantages import ESTIMATORS
from jaxstep.stages.pipeline import Chain, ppo_run_result, sampled_accuracy
from jaxstep.train import loop

logger = logging.getLogger(__name__)


def parse_schemes(spec: str) -> list[str]:
    """"orm, prm_max" -> ["orm", "prm_max"], validated, duplicates dropped."""
    schemes = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    bad = [s for s in schemes if s not in SCHEMES]
    if bad or not schemes:
        raise ValueError(f"sweep.schemes={spec!r}: unknown scheme(s) {bad}; expected a comma list of {tuple(SCHEMES)}")
    return schemes


def parse_estimators(spec: str) -> list[str]:
    """"gae, grpo" -> ["gae", "grpo"], validated, duplicates dropped."""
    estimators = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    bad = [s for s in estimators if s not in ESTIMATORS]
    if bad or not estimators:
        raise ValueError(f"sweep.estimators={spec!r}: unknown estimator(s) {bad}; expected a comma list "
                         f"of {tuple(ESTIMATORS)}")
    return estimators


def run_label(scheme: str, estimator: str) -> str:
    """The run's name part: the scheme for the critic's GAE, `<scheme>_<estimator>` else."""
    return scheme if estimator == "gae" else f"{scheme}_{estimator}"


def seconds_per_iteration(workdir: str) -> float | None:
    """Median `step_seconds` of a PPO run's iterations (the first, which compiles, left
    out when there are others)."""
    rows = training_rows(read_metrics(paths.join(workdir, "metrics.jsonl")))
    seconds = [r["step_seconds"] for r in rows if "step_seconds" in r]
    seconds = seconds[1:] if len(seconds) > 1 else seconds
    return statistics.median(seconds) if seconds else None


def planned_runs(s, schemes: list[str], estimators: list[str]) -> list[tuple[str, str, str]]:
    """(scheme, estimator, prompt source or "" for the configured mix) of every run: each
    scheme with each estimator on the mix, then `sweep.single_source_scheme` (with the
    first estimator) on the prompts of each `sweep.single_sources` source alone."""
    planned = [(scheme, estimator, "") for scheme in schemes for estimator in estimators]
    singles = [x.strip() for x in s.single_sources.split(",") if x.strip()]
    if singles and s.single_source_scheme not in SCHEMES:
        raise ValueError(f"sweep.single_source_scheme={s.single_source_scheme!r}: expected one of {tuple(SCHEMES)}")
    return planned + [(s.single_source_scheme, estimators[0], x) for x in singles]


def run(config, workdir: str) -> dict:
    """Runs (or reuses) the sweep in `workdir`; returns the summary."""
    started = time.time()
    loop.quiet_library_logs()
    s, delimiter = config.sweep, config.data.step_delimiter
    schemes = parse_schemes(s.schemes)
    estimators = parse_estimators(s.estimators or config.ppo.advantage)
    chain = Chain(config, workdir)
    policy = chain.sft()
    given = {"prm": s.prm, "orm": s.orm}
    reward_models = {}
    needed = schemes + ([s.single_source_scheme] if s.single_sources.strip() else [])
    for kind in dict.fromkeys(reward_model_kind(x) for x in needed):
        reward_models[kind] = chain.reward_model(kind, policy, given[kind])
    _, sft_rows = chain.evaluate("eval_sft", policy, "SFT")
    runs = []
    for scheme, estimator, source in planned_runs(s, schemes, estimators):
        label = run_label(scheme, estimator) + (f"_on_{source}" if source else "")
        for i in range(max(1, s.seeds)):
            suffix = "" if i == 0 else f"_seed{i}"
            name = f"ppo_{label}{suffix}"
            summary = chain.ppo(name, scheme=scheme, policy=policy, advantage=estimator, train_sources=source,
                                reward_model=reward_models[reward_model_kind(scheme)], seed=config.seed + i)
            one = ppo_run_result(chain, name, summary, f"eval_{label}{suffix}", sft_rows, delimiter)
            one.update(estimator=estimator, label=label, prompts=source or config.ppo.train_sources
                       or config.data.train_sources, seconds_per_iteration=(
                           seconds_per_iteration(one["workdir"]) if placement.is_main_process() else None))
            runs.append(one)
    result = {"stage": "sweep", "policy": policy, "reward_models": reward_models, "estimators": estimators,
              "sft": accuracy_with_error(sft_rows), "sft_hacking": eval_hacking_stats(sft_rows, delimiter),
              "sft_sampled_accuracy": sampled_accuracy(sft_rows),
              "sft_by_source": {name: accuracy_with_error([r for r in sft_rows if r["source"] == name])
                                for name in dict.fromkeys(r["source"] for r in sft_rows)},
              "runs": runs, "schemes": scheme_rows(runs), "timings": chain.timings,
              "seconds": time.time() - started}
    if placement.is_main_process():
        result["report"] = write_report(chain.root, result)
        print("\n" + comparison_table(result["sft"], result["sft_hacking"], result["schemes"]) + "\n", flush=True)
    return workdir_lib.write_chain_summary(workdir, config, result)
