"""Stage eval and the report helpers: files written, accuracy equals an independent recount."""
import json
import os

import numpy as np
import pytest

from jaxstep import config_lib
from jaxstep.data import formatting, grading
from jaxstep.evaluation import policy as eval_policy
from jaxstep import generation
from jaxstep.models import build as model_build
from jaxstep.reports import policy as policy_report
from jaxstep.reports import markdown as report_lib
from jaxstep.stages import evaluate as stage_eval
from jaxstep.evaluation import stats
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep import workdir as workdir_lib
from run_helpers import tiny_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config(model_path: str, limit: int = 8, **eval_overrides):
    c = config_lib.base_config("test_eval", "eval")
    tiny_model(c, max_position_embeddings=256)
    c.data.num_train = 96
    c.data.synthetic_max_steps = 3
    c.eval.model = model_path
    c.eval.limit = limit
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 12
    for key, value in eval_overrides.items():
        c.eval[key] = value
    return c


@pytest.fixture(scope="module")
def random_export(tmp_path_factory):
    """A randomly initialised tiny policy exported as an HF folder (with its tokenizer)."""
    folder = tmp_path_factory.mktemp("policy")
    config = tiny_config("")
    tokenizer = tokenizer_lib.resolve_tokenizer(config)
    model, params = model_build.build_model(config, tokenizer)
    return workdir_lib.export(str(folder), model, params, tokenizer)


def _recount(rows):
    """Accuracy per source recomputed from response + reference alone."""
    out = {}
    for source in {r["source"] for r in rows}:
        mine = [r for r in rows if r["source"] == source]
        out[source] = np.mean([grading.is_correct(r["response"], str(r["reference"])) for r in mine])
    return out


def _read_rows(workdir):
    return eval_policy.read_samples(os.path.join(workdir, eval_policy.SAMPLES_FILE))


def test_eval_stage_with_the_sampler_writes_report_samples_and_plots(random_export, tmp_path, capsys):
    workdir = str(tmp_path / "eval")
    summary = stage_eval.run(tiny_config(random_export, pass_k=2), workdir)
    for name in ("report.md", "samples.jsonl", "accuracy.png", "summary.json"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "accuracy.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    rows = _read_rows(workdir)
    assert len(rows) == 8 and all(len(r["samples"]) == 2 for r in rows)
    assert all(r["num_tokens"] <= 12 for r in rows)
    assert summary["accuracy"]["synthetic"] == pytest.approx(_recount(rows)["synthetic"])
    assert "synthetic" in capsys.readouterr().out  # the table is printed
    with open(os.path.join(workdir, "report.md"), encoding="utf-8") as f:
        text = f.read()
    assert "| synthetic | 8 |" in text and "pass@k" in text
    assert stage_eval.run(tiny_config(random_export, pass_k=2), workdir) == summary  # reused
    with pytest.raises(workdir_lib.StaleWorkdirError, match="--config.eval.pass_k: recorded 2, now 0"):
        stage_eval.run(tiny_config(random_export), workdir)  # another config: not reused


def _fake_decoder(wrong_every: int):
    """decode_problems stand-in: the reference solution, except every `wrong_every`-th."""
    def fake(model, params, tokenizer, problems, **kw):
        out = []
        for i, p in enumerate(problems):
            for k in range(kw.get("num_samples", 1)):
                text = formatting.reference_solution(p)
                if wrong_every and i % wrong_every == 0:
                    text = text.rsplit("####", 1)[0] + f"#### {int(p.answer) + 1}"
                answer, correct = generation.grade(p, text)
                out.append(generation.Decoded(p, k, text, (1, 2, 3), answer, correct, True))
        return out
    return fake


def test_accuracy_equals_recount_of_samples(random_export, tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "decode_problems", _fake_decoder(wrong_every=3))
    workdir = str(tmp_path / "eval")
    summary = stage_eval.run(tiny_config(random_export, limit=12), workdir)
    rows = _read_rows(workdir)
    recount = _recount(rows)["synthetic"]
    assert recount == pytest.approx(8 / 12)  # problems 0, 3, 6, 9 are wrong
    assert summary["accuracy"]["synthetic"] == pytest.approx(recount)
    by_level = summary["sets"]["synthetic"]["by_level"]
    assert sum(g["n"] for g in by_level.values()) == 12
    assert sum(g["n"] * g["accuracy"] for g in by_level.values()) == pytest.approx(8)
    assert os.path.isfile(os.path.join(workdir, "accuracy_by_level.png"))


def test_model_that_copies_the_reference_scores_100(random_export, tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "decode_problems", _fake_decoder(wrong_every=0))
    summary = stage_eval.run(tiny_config(random_export, limit=10), str(tmp_path / "eval"))
    assert summary["accuracy"] == {"synthetic": 1.0}
    assert all(g["accuracy"] == 1.0 for g in summary["sets"]["synthetic"]["by_subject"].values())


def test_hand_made_samples_file_is_regraded(tmp_path):
    rows = [
        {"source": "gsm8k", "reference": "1,250", "response": "So 1000 + 250 = 1250.\n#### 1250",
         "correct": False},
        {"source": "math", "level": 3, "subject": "Algebra", "reference": "\\frac{1}{2}",
         "response": "Thus the answer is $\\boxed{0.5}$.", "correct": False},
        {"source": "math", "level": 5, "subject": "Geometry", "reference": "\\sqrt{2}",
         "response": "It is $\\boxed{\\sqrt{2}}$.",
         "samples": [{"response": "#### 3"}, {"response": "$\\boxed{\\sqrt 2}$"}]},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    numbers = policy_report.report_from_samples(str(path), str(tmp_path / "out"))
    assert numbers["overall"] == {"n": 3, "accuracy": 1.0}
    assert numbers["sets"]["math"]["by_level"] == {"3": {"n": 1, "accuracy": 1.0},
                                                   "5": {"n": 1, "accuracy": 1.0}}
    assert numbers["sets"]["math"]["pass_at_k"] == 1.0
    assert numbers["sets"]["math"]["sample_accuracy"] == 0.5
    assert (tmp_path / "out" / "report.md").is_file()
    assert (tmp_path / "out" / "accuracy_by_subject.png").read_bytes()[:8] == PNG_MAGIC

    rows[0]["response"] = "I am not sure."  # no final answer: wrong, never an error
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    numbers = policy_report.report_from_samples(str(path), str(tmp_path / "out2"), plots=False)
    assert numbers["sets"]["gsm8k"]["accuracy"] == 0.0


def test_samples_file_errors_name_the_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"source": "a", "reference": "1", "response": "#### 1"}\n{"source": "a"}\n')
    with pytest.raises(ValueError, match=r"samples.jsonl:2: missing field"):
        eval_policy.read_samples(str(path))


def test_report_helpers(tmp_path):
    rows = [{"level": 1, "correct": True}, {"level": 1, "correct": False},
            {"level": 2, "correct": True}, {"level": None, "correct": False}]
    groups = stats.accuracy_by(rows, "level")
    assert [(g.name, g.n, g.correct) for g in groups] == [("1", 2, 1), ("2", 1, 1), ("?", 1, 0)]
    assert stats.accuracy_by(rows)[0].accuracy == 0.5
    table = report_lib.group_table(groups, "level")
    assert "| 1 | 2 | 1 | 50.0% |" in table
    assert report_lib.format_accuracy(float("nan")) == "-"
    metrics = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0, "eval_accuracy": 0.1}]
    curve = report_lib.plot_metric_curves({"run": metrics}, ["loss", "eval_accuracy", "absent"],
                                          str(tmp_path / "curves.png"))
    assert curve and (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert report_lib.plot_metric_curves({"run": metrics}, ["absent"], str(tmp_path / "none.png")) is None
    bars = report_lib.plot_accuracy_bars({"sft": {"a": 0.2, "b": 0.4}, "ppo": {"a": 0.5}},
                                         str(tmp_path / "bars.png"))
    assert (tmp_path / "bars.png").read_bytes()[:8] == PNG_MAGIC and bars.endswith("bars.png")
