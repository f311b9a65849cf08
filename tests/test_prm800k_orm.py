"""The PRM800K ORM: rated PRM800K solutions labelled by whether their final answer is
right (`rm.orm_labels = "prm800k"`, configs/train_orm.py:prm800k)."""
import os

from jaxstep import config_lib
from jaxstep import workdir as workdir_lib
from jaxstep.stages import reward_model
from run_helpers import tiny_model
from jaxstep.rm import label_files


def test_outcome_labels_from_the_real_records(shared_data):
    folder = shared_data / "prm800k"
    records = label_files.prm800k_outcome_labels(str(folder))
    # 16 records: 4 phase-1 paths that end in an answer, 9 phase-2 pre-generated
    # solutions with a ground truth; a give-up per file and a phase-2 screening record
    # (no ground truth) have no outcome.
    assert len(records) == 13
    assert sum(r.correct for r in records) == 4 and all(r.correct is not None for r in records)
    assert all(r.origin == "prm800k" and all(x is None for x in r.labels) for r in records)
    first = label_files.prm800k_outcome_labels(str(folder / "samples_openr.jsonl"))[0]
    assert first.correct and first.steps[-1].endswith("# Answer 29") and first.problem.answer == "29"
    assert all("\n" not in s for r in records for s in r.steps)  # one segment per step


def test_orm_stage_on_prm800k_outcomes(shared_data, tmp_path):
    c = config_lib.base_config("test_orm_prm800k", "orm")
    tiny_model(c, max_position_embeddings=512)
    c.data.num_train = 64
    c.data.max_prompt_len = 128
    c.data.max_response_len = 256
    r = c.rm
    r.orm_labels, r.prm800k_path = "prm800k", str(shared_data / "prm800k")
    r.steps, r.batch_size, r.log_every, r.warmup_steps = 3, 4, 1, 1
    r.eval_problems, r.eval_fraction = 0, 0.3
    config_lib.validate(c)
    summary = reward_model.run(c, str(tmp_path / "orm"))
    assert summary["labels"] == "prm800k outcome" and summary["steps"] == 3
    assert summary["data"]["train_records"] + summary["data"]["eval_records"] == 13
    assert summary["data"]["eval_records"] > 0
    assert os.path.isfile(os.path.join(tmp_path, "orm", "export", "reward_model.json"))
    assert workdir_lib.is_done(str(tmp_path / "orm"))
