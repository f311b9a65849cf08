"""The common config module: the sections with their documented defaults (`sections`),
the presets several experiment files share (`presets`) and `validate` (`validation`).

An experiment is one file in `configs/` (big_vision style) that holds the experiment:
its `get_config(arg)` starts from `base_config(name, stage)`, sets what it studies and
applies the preset named after the colon (`--config=configs/ppo_prm_max.py:paper`),
one of the file's `PRESETS`. The preset "" (also "cpu") runs on a laptop CPU in minutes
on built-in synthetic data; "paper" is the real scale. `jaxstep.main` runs
`validate(config)` before any stage.
"""
from jaxstep.config_lib.presets import (CLIP_DELTA_MODEL, PAPER_MODEL, PAPER_REWARD_MODEL, bf16_fsdp,
                                        clip_delta_paper, main_job_cpu, main_job_paper, ppo_experiment, preset, reward_model_kind, rm_paper, sft_paper,
                                        synthetic_cpu_lengths, synthetic_prm)
from jaxstep.config_lib.sections import (DEFAULT_RULES, base_config, checkpoint_config, data_config,
                                         distributed_config, eval_config, mesh_config, model_config,
                                         pipeline_config, ppo_config, rm_config, sampler_config,
                                         sft_config, sweep_config)
from jaxstep.config_lib.validation import (CORRUPTION_KINDS, CRITIC_INITS, KL_ESTIMATORS, LABEL_RULES,
                                           MC_MODES, PPO_STAGES, RM_KINDS, RM_LABELS, RM_LOSSES,
                                           SCHEMES, STAGES, comma_list, problems,
                                           trained_reward_models, validate)

__all__ = ["CLIP_DELTA_MODEL", "PAPER_MODEL", "PAPER_REWARD_MODEL", "bf16_fsdp", "clip_delta_paper",
           "main_job_cpu", "main_job_paper", "ppo_experiment",
           "preset", "reward_model_kind", "rm_paper", "sft_paper", "synthetic_cpu_lengths",
           "synthetic_prm", "DEFAULT_RULES", "base_config", "checkpoint_config", "data_config",
           "distributed_config", "eval_config", "mesh_config", "model_config", "pipeline_config",
           "ppo_config", "rm_config", "sampler_config", "sft_config", "sweep_config",
           "CORRUPTION_KINDS", "CRITIC_INITS", "KL_ESTIMATORS", "LABEL_RULES", "MC_MODES",
           "PPO_STAGES", "RM_KINDS", "RM_LABELS", "RM_LOSSES", "SCHEMES", "STAGES", "comma_list",
           "problems", "trained_reward_models", "validate"]
