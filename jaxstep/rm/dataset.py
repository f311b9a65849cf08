"""A reward-model stage's data: labelled training records and held-out samples.

    data = build_data(config, workdir, "prm", generator, mesh, key)   # or read back from <workdir>/data

Labels (`rm.labels`): exact (synthetic problems, step by step), prm800k (human step
ratings), montecarlo (Math-Shepherd: does any completion of the prefix succeed?), and
outcome labels for the ORM. Samples come from the generator through
`jaxstep.generation.decode_problems`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Sequence

import jax
import numpy as np

from jaxstep import generation, paths, workdir as workdir_lib
from jaxstep.data import formatting, sources, synthetic
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.data.problem import Problem
from jaxstep.rm import labels as labels_lib
from jaxstep.rm import montecarlo
from jaxstep.models import build as model_build
from jaxstep.models.reward_io import KINDS
from jaxstep.parallel import placement
from jaxstep.rewards.losses import LOSSES
from jaxstep.data import step_checks
from jaxstep.rm import label_files

logger = logging.getLogger(__name__)




LABEL_SOURCES = ("exact", "prm800k", "montecarlo")




DATA_DIR = "data"


@dataclasses.dataclass
class StageData:
    """What a reward-model stage trains and evaluates on.

    Attributes:
      train: StepLabels (bce) or StepPreference (bt) records.
      eval_samples: held-out generator samples (problem-major, `best_of_n` each).
      eval_records: held-out records of the label source (PRM800K / a solutions file).
      greedy_accuracy: the generator's greedy accuracy on the eval problems.
      info: counts and label balance (for the summary).
    """

    train: list
    eval_samples: list
    eval_records: list
    greedy_accuracy: float | None
    info: dict


def stage_kind(config) -> str:
    """"orm" or "prm": the stage name when it is one of them, else `rm.kind`."""
    kind = config.stage if config.stage in KINDS else config.rm.kind
    if kind not in KINDS:
        raise ValueError(f"rm.kind must be one of {KINDS}, got {kind!r}")
    return kind


def generator_path(config, workdir: str) -> str:
    """`rm.generator`, else `<workdir>/../sft/export` if it exists, else ""."""
    if config.rm.generator:
        return config.rm.generator
    default = workdir_lib.default_input(workdir, "sft")
    return default if paths.agree(placement.is_main_process() and paths.isdir(default)) else ""


def max_len(config) -> int:
    """Tokens per reward-model training sequence (`rm.max_len`, else prompt + response)."""
    return config.rm.max_len or (config.data.max_prompt_len + config.data.max_response_len)


def _sample(config, generator, problems: Sequence[Problem], num_samples: int, key, mesh,
            desc: str, greedy: bool = False, temperature: float = 0.0):
    model, params, tokenizer = generator
    s = config.sampler
    return generation.decode_problems(
        model, params, tokenizer, problems, max_prompt_len=config.data.max_prompt_len,
        max_new_tokens=config.data.max_response_len, batch_size=s.batch_size, greedy=greedy,
        temperature=temperature or s.temperature, top_k=s.top_k, top_p=s.top_p, num_samples=num_samples,
        key=key, mesh=mesh, desc=desc, template=formatting.config_template(config),
        decode_block=s.decode_block)


def make_completer(config, generator, mesh) -> montecarlo.CompleteFn:
    """The Monte-Carlo sampler: continuations of `prompt + prefix` with the generator."""
    model, params, tokenizer = generator
    s = config.sampler

    def complete(problems, prefixes, num_samples, key):
        results = generation.decode_problems(
            model, params, tokenizer, problems, prefixes=prefixes,
            max_prompt_len=config.data.max_prompt_len + config.data.max_response_len,
            max_new_tokens=config.data.max_response_len, batch_size=s.batch_size, greedy=False,
            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, num_samples=num_samples,
            key=key, mesh=mesh, progress=False, template=formatting.config_template(config),
            decode_block=s.decode_block)
        return [r.text for r in results]

    return complete


def _split_held_out(records: list, fraction: float, key) -> tuple[list, list]:
    """(train, held-out) split by problem, `fraction` of the problems held out."""
    ids = sorted({r.problem.id or r.problem.question for r in records})
    if fraction <= 0 or len(ids) < 2:
        return records, []
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    n_out = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
    held = set(rng.permutation(ids)[:n_out].tolist())
    return ([r for r in records if (r.problem.id or r.problem.question) not in held],
            [r for r in records if (r.problem.id or r.problem.question) in held])


def _label_samples(problems, texts, delimiter, rule):
    """Exact step labels where the problem is synthetic, outcome labels elsewhere."""
    out = []
    for p, t in zip(problems, texts):
        if synthetic.is_synthetic(p.source):
            out.extend(labels_lib.exact_labels([p], [t], delimiter=delimiter, rule=rule))
        else:
            out.extend(labels_lib.outcome_labels([p], [t], delimiter=delimiter))
    return out


def corruption_kinds(spec: str) -> tuple[str, ...]:
    """ "arithmetic, operand" -> ("arithmetic", "operand"), validated; "" = every kind."""
    kinds = tuple(k.strip() for k in spec.split(",") if k.strip())
    bad = [k for k in kinds if k not in step_checks.KINDS]
    if bad:
        raise ValueError(f"rm.corruption_kinds={spec!r}: unknown kind(s) {bad}; expected a comma list of {step_checks.KINDS}")
    return kinds


def _contrast_solutions(config, problems: Sequence[Problem], key: jax.Array) -> list:
    """Corrupted and reference solutions of synthetic training problems (`rm.corrupted_per_problem`,
    `rm.references_per_problem`: the share of problems that get one; over the first
    `rm.contrast_problems` train problems, 0 = the sampled ones).

    They differ from each other (and from the generator's samples of the same problem)
    only where a step goes wrong, so the model must check the arithmetic instead of
    judging how hard a problem looks.
    """
    r = config.rm
    if r.contrast_problems > len(problems):
        problems = sources.load_problems(config, config.data.train_sources, "train", limit=r.contrast_problems)
    problems = [p for p in problems if synthetic.is_synthetic(p.source)][:r.contrast_problems or None]
    out: list = []
    k_c = jax.random.fold_in(key, 7)
    for share, make in ((r.corrupted_per_problem, lambda ps, k: labels_lib.corrupted_solutions(
            ps, k, rule=r.label_rule, kinds=corruption_kinds(r.corruption_kinds))), (r.references_per_problem, lambda ps, k: labels_lib.reference_solutions(ps))):
        whole, frac = int(share), share - int(share)
        for rep in range(whole + (1 if frac > 0 else 0)):
            chosen = problems if rep < whole else problems[:int(round(frac * len(problems)))]
            out.extend(make(chosen, jax.random.fold_in(k_c, rep)))
    return out


def build_data(config, workdir: str, kind: str, generator, mesh, key: jax.Array) -> StageData:
    """Builds (or reads back from `<workdir>/data/`) the stage's training and eval data."""
    r, d = config.rm, config.data
    folder = paths.join(workdir, DATA_DIR)
    train_file = paths.join(folder, "train.jsonl")
    samples_file = paths.join(folder, "eval_samples.jsonl")
    records_file = paths.join(folder, "eval_records.jsonl")
    info_file = paths.join(folder, "info.json")
    built = placement.is_main_process() and all(
        paths.isfile(f) for f in (train_file, samples_file, records_file, info_file))
    if paths.agree(built):  # decided on process 0: every process reuses, or every one builds
        info = json.loads(paths.read_text(info_file))
        logger.info("%s: reusing the training data in %s", kind, folder)
        return StageData(labels_lib.load_records(train_file), labels_lib.load_records(samples_file),
                         labels_lib.load_records(records_file), info.get("greedy_accuracy"), info)

    delimiter = d.step_delimiter
    k_sample, k_balance, k_mc, k_split, k_eval, k_pairs = jax.random.split(key, 6)
    orm_prm800k = kind == "orm" and r.get("orm_labels") == "prm800k"  # PRM800K outcome labels
    info: dict[str, Any] = {"kind": kind, "labels": r.labels if kind == "prm" else
                            ("prm800k outcome" if orm_prm800k else "outcome"),
                            "loss": r.loss if kind == "prm" else "bce"}
    eval_records: list = []
    started = time.time()

    if kind == "orm" and r.solutions_path:
        records = label_files.read_labeled_solutions(
            r.solutions_path, delimiter=delimiter, limit=r.num_problems or None,
            skip_bad_records=d.skip_bad_records)
        records, eval_records = _split_held_out(records, r.eval_fraction, k_split)
    elif orm_prm800k:
        if not r.prm800k_path:
            raise ValueError("rm.orm_labels='prm800k' needs rm.prm800k_path (a PRM800K .jsonl file or folder)")
        records = label_files.prm800k_outcome_labels(r.prm800k_path, skip_bad_records=d.skip_bad_records,
                                                    delimiter=delimiter)
        records = records[:r.num_problems] if r.num_problems else records
        records, eval_records = _split_held_out(records, r.eval_fraction, k_split)
    elif kind == "prm" and r.labels == "prm800k":
        if not r.prm800k_path:
            raise ValueError("rm.labels='prm800k' needs rm.prm800k_path (a PRM800K .jsonl file or folder)")
        step_records, pairs = label_files.prm800k_labels(
            r.prm800k_path, neutral_is_positive=r.neutral_is_positive,
            skip_bad_records=d.skip_bad_records, delimiter=delimiter)
        step_records, eval_records = _split_held_out(step_records, r.eval_fraction, k_split)
        held = {x.problem.id for x in eval_records}
        records = [p for p in pairs if p.problem.id not in held] if r.loss == "bt" else step_records
        info["pairs"] = len(pairs)
    else:
        if generator is None:
            raise ValueError(f"stage {kind} with labels={r.labels!r} samples solutions from a generator, "
                             "but none was found: set rm.generator (an HF/export folder) or run the "
                             "sft stage in <workdir>/../sft first")
        problems = sources.load_problems(config, d.train_sources, "train", limit=r.num_problems or None)
        decoded = _sample(config, generator, problems, r.samples_per_problem, k_sample, mesh, f"{kind} samples")
        sample_problems = [x.problem for x in decoded]
        texts = [x.text for x in decoded]
        info["sample_accuracy"] = float(np.mean([x.correct for x in decoded])) if decoded else None
        if kind == "orm":
            records = labels_lib.outcome_labels(sample_problems, texts, delimiter=delimiter)
            synthetic_problems = [p for p in problems if synthetic.is_synthetic(p.source)]
            records += _contrast_solutions(config, synthetic_problems, k_balance)
            records = labels_lib.balance_classes(records, synthetic_problems, k_balance,
                                                 min_fraction=r.min_class_fraction, by="outcome")
        elif r.labels == "exact":
            if any(not synthetic.is_synthetic(p.source) for p in problems):
                raise ValueError("rm.labels='exact' needs synthetic problems (data.train_sources="
                                 f"{d.train_sources!r}); use montecarlo or prm800k for real data")
            records = labels_lib.exact_labels(sample_problems, texts, delimiter=delimiter, rule=r.label_rule)
            records += _contrast_solutions(config, problems, k_balance)
            records = labels_lib.balance_classes(records, problems, k_balance,
                                                 min_fraction=r.min_class_fraction, rule=r.label_rule)
        elif r.labels == "montecarlo":
            unlabelled = labels_lib.outcome_labels(sample_problems, texts, delimiter=delimiter)
            records = montecarlo.montecarlo_labels(
                unlabelled, make_completer(config, generator, mesh), num_completions=r.mc_samples,
                key=k_mc, cache_path=paths.join(folder, "montecarlo.jsonl"), mode=r.mc_mode,
                delimiter=delimiter, chunk=r.mc_chunk)
        else:
            raise ValueError(f"rm.labels must be one of {LABEL_SOURCES}, got {r.labels!r}")
        if kind == "prm" and r.loss == "bt":
            records = labels_lib.preference_pairs(records, max_pairs_per_problem=r.pairs_per_problem,
                                                  key=k_pairs)
    if kind == "prm" and r.loss not in LOSSES:
        raise ValueError(f"rm.loss must be one of {LOSSES}, got {r.loss!r}")
    if kind == "orm":
        records = [x for x in records if x.correct is not None]
    elif r.loss == "bce":
        records = [x for x in records if any(v is not None for v in x.labels)]
    if not records:
        raise ValueError(f"{kind}: no training records with labels were built (labels={r.labels!r}, "
                         f"loss={r.loss!r})")
    if isinstance(records[0], labels_lib.StepLabels):
        info["train_balance"] = labels_lib.label_balance(records)
    info["train_records"] = len(records)
    info["data_seconds"] = time.time() - started

    # Held-out samples of the generator: step/outcome AUC and best-of-N.
    eval_samples: list = []
    greedy_accuracy = None
    eval_problems = sources.eval_problems(config, r.eval_problems) if generator is not None else []
    if eval_problems:
        started = time.time()
        decoded = _sample(config, generator, eval_problems, r.best_of_n, k_eval, mesh, f"{kind} eval samples",
                          temperature=r.eval_temperature)
        eval_samples = _label_samples([x.problem for x in decoded], [x.text for x in decoded],
                                      delimiter, r.label_rule)
        greedy = _sample(config, generator, eval_problems, 1, k_eval, mesh, "greedy", greedy=True)
        greedy_accuracy = float(np.mean([x.correct for x in greedy]))
        info["greedy_correct"] = [bool(x.correct) for x in greedy]
        info["eval_sample_accuracy"] = float(np.mean([x.correct for x in decoded]))
        info["eval_data_seconds"] = time.time() - started
    info["greedy_accuracy"] = greedy_accuracy
    info["eval_samples"] = len(eval_samples)
    info["eval_records"] = len(eval_records)

    if placement.is_main_process():
        labels_lib.save_records(train_file, records)
        labels_lib.save_records(samples_file, eval_samples)
        labels_lib.save_records(records_file, eval_records)
        paths.write_text(info_file, json.dumps(workdir_lib.jsonable(info), indent=2))
    placement.sync("jaxstep_rm_data")
    return StageData(records, eval_samples, eval_records, greedy_accuracy, info)


def load_generator(config, path: str):
    """`(model, params, tokenizer)` of the generator at `path`."""
    tokenizer = tokenizer_lib.resolve_tokenizer(config, path)
    model, params = model_build.build_model(config, tokenizer, path)
    return model, params, tokenizer
