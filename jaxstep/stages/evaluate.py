"""Stage `eval`: greedy (and optional sampled pass@k) accuracy of a policy on test sets.

    python -m jaxstep.main --config=configs/eval.py --workdir=runs/eval \\
        --config.eval.model=runs/sft/export

Decodes every problem of each set in `eval.sources` (synthetic | gsm8k | math | math500
| a local file) with the KV-cache sampler, grades the final answers with
`jaxstep.data.grading.is_correct`, and writes to the workdir:

  samples.jsonl   one line per problem: question, reference answer, response, extracted
                  answer, correct (and the k sampled responses with pass@k)
  report.md       accuracy per set, by MATH level and by subject, a few examples
  *.png           accuracy plots (and the training curves of the model, when its
                  workdir's metrics.jsonl sits next to the export folder)
  summary.json    the numbers (written last: a finished eval is reused)

The accuracy of a samples.jsonl can be recomputed, independent of any model, with
`jaxstep.reports.policy.report_from_samples(path, out_dir)`.
"""
from __future__ import annotations

import logging
import os
import time

from jaxstep import paths, workdir as workdir_lib
from jaxstep.data import sources
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.evaluation.policy import (SAMPLES_FILE, evaluate_model, prompts_truncated, summarize,
                                      write_samples)
from jaxstep.models import build as model_build
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import placement
from jaxstep.reports import markdown as report_lib
from jaxstep.reports.policy import REPORT_FILE, accuracy_table_rows, write_report
from jaxstep.train import loop

logger = logging.getLogger(__name__)


def _label(config, model_path: str) -> str:
    if config.eval.label:
        return config.eval.label
    path = os.path.normpath(model_path)
    base = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if base == workdir_lib.EXPORT_DIR else base


def run(config, workdir: str) -> dict:
    """Evaluates `config.eval.model` (default `<workdir>/../sft/export`); returns the summary."""
    if (done := workdir_lib.reuse_if_done(workdir, "eval", config)) is not None:
        return done
    loop.quiet_library_logs()
    started = time.time()
    e = config.eval
    model_path = e.model or workdir_lib.default_input(workdir, "sft")
    if (os.path.sep in model_path or paths.is_remote(model_path)) and not paths.exists(model_path):
        raise FileNotFoundError(f"eval: model folder {model_path} not found (set --config.eval.model)")
    tokenizer = tokenizer_lib.resolve_tokenizer(config, model_path)
    model, params = model_build.build_model(config, tokenizer, model_path)
    mesh = mesh_lib.make_mesh(config.mesh)
    params = placement.shard_params(params, model, mesh, config.mesh.rules)
    rows = evaluate_model(config, model, params, tokenizer, mesh=mesh)
    numbers = summarize(rows)
    if prompts_truncated(rows):
        logger.warning("eval: %d of %d prompts were longer than data.max_prompt_len=%d and lost "
                       "their first tokens", prompts_truncated(rows), len(rows),
                       config.data.max_prompt_len)
    label = _label(config, model_path)
    if placement.is_main_process():
        paths.makedirs(workdir)
        write_samples(paths.join(workdir, SAMPLES_FILE), rows)
        settings = {"decoding": "greedy" + (f"; pass@{e.pass_k} sampled at temperature "
                                            f"{config.sampler.temperature}" if e.pass_k else ""),
                    "max new tokens": e.max_new_tokens, "split": e.split,
                    "problems per set": e.limit or "all"}
        write_report(workdir, rows, numbers, label=label, model_path=model_path,
                     settings=settings, plots=e.plots)
        headers, table = accuracy_table_rows(numbers)
        print(f"\nEvaluation of {label}\n" + report_lib.text_table(headers, table) + "\n", flush=True)
    summary = {"stage": "eval", "model": model_path, "label": label,
               "accuracy": {s: v["accuracy"] for s, v in numbers["sets"].items()},
               "overall_accuracy": numbers["overall"]["accuracy"], "sets": numbers["sets"],
               "data_skipped": sources.skipped_count(rows),
               "prompts_truncated": prompts_truncated(rows),
               "report": paths.join(workdir, REPORT_FILE), "seconds": time.time() - started}
    return workdir_lib.write_summary(workdir, summary)

