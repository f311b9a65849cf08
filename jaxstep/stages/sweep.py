"""Stage `sweep`: several reward schemes on the same SFT policy and reward models.

    python -m jaxstep.main --config=configs/sweep.py [--workdir=runs/sweep]
    python -m jaxstep.main --config=configs/sweep.py --config.sweep.schemes=orm,prm_max,clip_delta

The paper's experiment in miniature. In the workdir (every stage reused when its
summary.json exists):

  sft/                  the SFT policy (or `ppo.policy`)
  prm/, orm/            the reward models the schemes need, trained on samples of that
                        SFT policy (or `sweep.prm` / `sweep.orm`)
  eval_sft/             greedy eval of the SFT policy
  ppo_<scheme>/         one PPO run per scheme (ppo_<scheme>_seed1, ... with sweep.seeds > 1)
  eval_<scheme>/        greedy eval of each final policy on the same test problems
  report.md             one comparison table: accuracy (with standard error and the paired
                        difference to SFT), reward, KL and reward-hacking statistics per
                        scheme; reward/KL curves of all schemes (PNG)
  summary.json
"""
from __future__ import annotations

import logging
import time

from jaxstep import workdir as workdir_lib
from jaxstep.evaluation.hacking import eval_hacking_stats
from jaxstep.evaluation.stats import accuracy_with_error
from jaxstep.parallel import placement
from jaxstep.reports.sweep import comparison_table, scheme_rows, write_report
from jaxstep.rewards.shaping import SCHEMES, reward_model_kind
from jaxstep.stages.pipeline import Chain, ppo_run_result
from jaxstep.train import loop

logger = logging.getLogger(__name__)


def parse_schemes(spec: str) -> list[str]:
    """"orm, prm_max" -> ["orm", "prm_max"], validated, duplicates dropped."""
    schemes = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    bad = [s for s in schemes if s not in SCHEMES]
    if bad or not schemes:
        raise ValueError(f"sweep.schemes={spec!r}: unknown scheme(s) {bad}; expected a comma list of {tuple(SCHEMES)}")
    return schemes


def run(config, workdir: str) -> dict:
    """Runs (or reuses) the sweep in `workdir`; returns the summary."""
    if workdir_lib.is_done(workdir):
        logger.info("sweep: %s is done; reusing it.", workdir)
        return workdir_lib.read_summary(workdir)
    started = time.time()
    loop.quiet_library_logs()
    s, delimiter = config.sweep, config.data.step_delimiter
    schemes = parse_schemes(s.schemes)
    chain = Chain(config, workdir)
    policy = chain.sft()
    given = {"prm": s.prm, "orm": s.orm}
    reward_models = {}
    for kind in dict.fromkeys(reward_model_kind(x) for x in schemes):
        reward_models[kind] = chain.reward_model(kind, policy, given[kind])
    _, sft_rows = chain.evaluate("eval_sft", policy, "SFT")
    runs = []
    for scheme in schemes:
        for i in range(max(1, s.seeds)):
            suffix = "" if i == 0 else f"_seed{i}"
            name = f"ppo_{scheme}{suffix}"
            summary = chain.ppo(name, scheme=scheme, policy=policy,
                                reward_model=reward_models[reward_model_kind(scheme)], seed=config.seed + i)
            runs.append(ppo_run_result(chain, name, summary, f"eval_{scheme}{suffix}", sft_rows, delimiter))
    result = {"stage": "sweep", "policy": policy, "reward_models": reward_models,
              "sft": accuracy_with_error(sft_rows), "sft_hacking": eval_hacking_stats(sft_rows, delimiter),
              "runs": runs, "schemes": scheme_rows(runs), "timings": chain.timings,
              "seconds": time.time() - started}
    if placement.is_main_process():
        result["report"] = write_report(chain.root, result)
        print("\n" + comparison_table(result["sft"], result["sft_hacking"], result["schemes"]) + "\n", flush=True)
    return workdir_lib.write_summary(workdir, result)
