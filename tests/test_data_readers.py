"""Readers on the real files, local paths, step splitting, and malformed input."""
import json
import logging
import sys

import pytest

from jaxstep.data import DataError, Problem, load, save_jsonl, steps
from jaxstep.data.problem import UnusableRecord


# ---------------------------------------------------------------- real files

def test_gsm8k(shared_data):
    test = load("gsm8k", "test", data_dir=shared_data)
    assert len(test) == 1319 and test.skipped == 0
    first = test[0]
    assert first.steps == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
                           "She makes 9 * 2 = $18 every day at the farmer\u2019s market.")
    assert first.answer == "18" and first.source == "gsm8k" and first.id == "gsm8k/test/0"
    assert all("<<" not in s for p in test for s in p.steps)
    assert all("," not in p.answer and int(p.answer) == int(p.answer) for p in test)
    assert sum(p.answer.startswith("-") for p in test) == 2
    kept = load("gsm8k", "test", data_dir=shared_data, keep_calculator=True, limit=5)
    assert len(kept) == 5 and "<<16-3-4=9>>" in kept[0].steps[0]
    assert len(load("gsm8k", "train", data_dir=shared_data)) == 7473


def test_math_and_math500(shared_data):
    test = load("math", "test", data_dir=shared_data)
    assert len(test) == 5000
    assert [sum(p.level == k for p in test) for k in range(1, 6)] == [437, 894, 1131, 1214, 1324]
    assert sum(p.subject == "Algebra" for p in test) == 1187
    assert test[2].answer == "\\dfrac{9}{7}" and test[0].id == "math/test/0"
    math500 = load("math500", "test", data_dir=shared_data)
    assert len(math500) == 500
    assert [sum(p.level == k for p in math500) for k in range(1, 6)] == [43, 90, 105, 128, 134]
    raw = [json.loads(line) for line in (shared_data / "math" / "math500_test.jsonl").read_text().splitlines()]
    for problem, record in zip(math500, raw):
        assert problem.answer == record["answer"] == steps.last_boxed(record["solution"])
        assert problem.id == record["unique_id"] and problem.source == "math500"
        assert problem.steps and all(s.strip() and "\n" not in s for s in problem.steps)


def test_math_train_loads_by_default_skipping_two_empty_boxed_answers(shared_data, caplog):
    # The official MATH train file has two solutions whose last \boxed{} is empty.
    path = shared_data / "math" / "train.jsonl"
    with caplog.at_level(logging.WARNING, logger="jaxstep.data.problem"):
        train = load("math", "train", data_dir=shared_data)
    assert len(train) == 7498 and train.skipped == 2
    assert [e.line for e in train.errors] == [5530, 5532]
    assert all(isinstance(e, UnusableRecord) for e in train.errors)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one warning for the whole file, not one per record
    message = warnings[0].getMessage()
    assert "skipped 2 unusable record(s)" in message and "strict=True" in message
    assert f"first: {path}:5530: no final answer: the last \\boxed{{}} in 'solution' is empty" in message
    assert sum(p.level is None for p in train) == 2  # "Level ?"
    # Nothing else in the official files is skipped.
    assert load("math", "test", data_dir=shared_data).skipped == 0
    assert load("gsm8k", "train", data_dir=shared_data).skipped == 0
    # skip_bad_records=True skips the same two (it only adds malformed records).
    assert load("math", "train", data_dir=shared_data, skip_bad_records=True) == train


def test_math_train_strict_raises_naming_file_and_line(shared_data):
    path = shared_data / "math" / "train.jsonl"
    with pytest.raises(UnusableRecord, match=r"train\.jsonl:5530: .*\\boxed\{\} .* is empty") as info:
        load("math", "train", data_dir=shared_data, strict=True)
    assert isinstance(info.value, DataError)
    assert (info.value.path, info.value.line) == (str(path), 5530)
    assert str(info.value).startswith(f"{path}:5530: ")
    with pytest.raises(ValueError, match="contradict"):
        load("math", "train", data_dir=shared_data, strict=True, skip_bad_records=True)


def test_data_dir_from_environment(shared_data, monkeypatch):
    monkeypatch.setenv("JAXSTEP_DATA_DIR", str(shared_data))
    assert len(load("math500", "test", limit=3)) == 3
    monkeypatch.delenv("JAXSTEP_DATA_DIR")
    with pytest.raises(FileNotFoundError, match="JAXSTEP_DATA_DIR"):
        load("gsm8k", "test")
    with pytest.raises(ValueError, match="splits"):
        load("math500", "train", data_dir=shared_data)


def test_local_files_and_folders(shared_data, tmp_path):
    # A GSM8K file by path, and a folder holding {split}.jsonl.
    assert load(str(shared_data / "gsm8k" / "test.jsonl"), "test", limit=2)[1].answer == "3"
    assert len(load(str(shared_data / "gsm8k"), "test", limit=4)) == 4
    # The original MATH layout: one pretty-printed JSON file per problem, sparse numbering.
    folder = tmp_path / "MATH" / "train" / "algebra"
    folder.mkdir(parents=True)
    for n in (10, 2):
        record = {"problem": f"What is {n}+1?", "level": "Level 1", "type": "Algebra",
                  "solution": f"We add.\n\nSo it is $\\boxed{{{n + 1}}}$."}
        (folder / f"{n}.json").write_text(json.dumps(record, indent=4))
    problems = load(str(tmp_path / "MATH"), "train")
    assert [p.answer for p in problems] == ["3", "11"]  # natural file order: 2.json, 10.json
    assert problems[0].steps == ("We add.", "So it is $\\boxed{3}$.") and problems[0].level == 1
    # Our own format round-trips, synthetic problems included.
    mine = load("synthetic", "test", limit=5) + [Problem("q?", ("a",), "1", "custom", None, None, "c/0")]
    save_jsonl(mine, tmp_path / "mine.jsonl")
    assert list(load(str(tmp_path / "mine.jsonl"), "test")) == mine
    # PRM800K records load as Problems (the screening question has no answer).
    prm = load(str(shared_data / "prm800k"), "test", skip_bad_records=True)
    assert len(prm) == 15 and prm.skipped == 1 and prm[0].answer == "29"


def test_math_sentence_splitting_rule():
    solution = ("Note that $x = 2.$ Then $y = x + 1 = 3$. We get e.g. the value 3.5 here. "
                "1. First, look. The set $\\{1, 2. 3\\}$ is fine!\n\n"
                "[asy]\ndraw((0,0)--(1,1));\nlabel(\"A. B\", (0,0));\n[/asy]\n\n"
                "Finally,\n\\[\nz = 4.\n\\] So the answer is $\\boxed{4}$.")
    assert steps.split_math(solution) == [
        "Note that $x = 2.$",
        "Then $y = x + 1 = 3$.",
        "We get e.g. the value 3.5 here.",
        "1. First, look.",
        "The set $\\{1, 2. 3\\}$ is fine!",
        "[asy] draw((0,0)--(1,1)); label(\"A. B\", (0,0)); [/asy]",
        "Finally, \\[ z = 4. \\]",
        "So the answer is $\\boxed{4}$.",
    ]
    assert len(steps.split_math(solution, mode="paragraphs")) == 3
    with pytest.raises(ValueError):
        steps.split_math(solution, mode="words")


def test_hf_source_through_datasets(shared_data, tmp_path):
    # The "json" builder ships with `datasets`, so this needs no network.
    files = {"test": str(shared_data / "math" / "math500_test.jsonl")}
    problems = load("hf:json", "test", limit=4, hf_kwargs={"data_files": files, "cache_dir": str(tmp_path)})
    expected = load("math500", "test", data_dir=shared_data, limit=4)
    assert [(p.question, p.answer, p.steps, p.level) for p in problems] == \
        [(p.question, p.answer, p.steps, p.level) for p in expected]


def test_tfds_source_with_array_record_data_source(monkeypatch):
    class FakeTfds:  # tfds.data_source returns a random-access source of dicts of bytes
        @staticmethod
        def data_source(name, split, data_dir=None):
            assert (name, split) == ("gsm8k", "test")
            return [{"question": b"Q?", "answer": b"1+1=2\n#### 2"}] * 3

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", FakeTfds)
    problems = load("tfds:gsm8k", "test")
    assert len(problems) == 3 and problems[0].answer == "2" and problems[0].steps == ("1+1=2",)


def test_one_call_shape_for_every_source(shared_data):
    common = dict(limit=2, skip_bad_records=False, data_dir=shared_data, seed=1, keep_calculator=False)
    for source in ("synthetic", "gsm8k", "math", "math500"):
        assert len(load(source, "test", **common)) == 2
        assert len(load(source, "test", strict=True, **common)) == 2
    assert load("synthetic", "test", **common) == load("synthetic", "test", limit=2, seed=1)
    # The error policy does not touch the synthetic source: same problems, bit for bit.
    default = load("synthetic", "train", limit=20, seed=3)
    for kw in ({"strict": True}, {"skip_bad_records": True}):
        other = load("synthetic", "train", limit=20, seed=3, **kw)
        assert other == default and other.skipped == 0
        assert [json.dumps(p.to_json()) for p in other] == [json.dumps(p.to_json()) for p in default]


def test_optional_sources_fail_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if the extra is missing
    with pytest.raises(ImportError, match=r"jaxstep\[tfds\]"):
        load("tfds:gsm8k", "test")
    with pytest.raises(ValueError, match="unknown data source"):
        load("no-such-dataset", "test")
    with pytest.raises(TypeError, match="unexpected"):
        load("gsm8k", "test", colour="red")


# ---------------------------------------------------------------- malformed input

GOOD = json.dumps({"question": "Q?", "answer": "2+2=4\n#### 4"})
# Malformed input: raises by default (and with strict=True); skip_bad_records=True skips it.
MALFORMED = {
    "invalid_json": (b'{"question": "Q?", "answer": ', r"invalid JSON"),
    "not_an_object": (b'["question", "answer"]', r"expected a JSON object"),
    "missing_field": (json.dumps({"question": "Q?", "solution": "x"}).encode(), r"unrecognised record"),
    "missing_problem": (json.dumps({"solution": "so \\boxed{3}", "answer": "3"}).encode(), r"unrecognised record"),
    "wrong_type": (json.dumps({"question": "Q?", "answer": 4}).encode(), r"field 'answer' should be str, got int"),
    "wrong_level": (json.dumps({"problem": "P", "solution": "\\boxed{1}", "level": [1]}).encode(), r"field 'level'"),
    "bad_encoding": (b'{"question": "Q\xff\xfe?", "answer": "#### 4"}', r"not valid UTF-8"),
    "empty_question": (json.dumps({"question": " ", "answer": "1\n#### 1"}).encode(), r"'question' is empty"),
    "bad_step": (json.dumps({"question": "Q", "steps": [" "], "answer": "1"}).encode(), r"steps\[0\]"),
}
# Well formed but unusable (the kind of flaw the official files have): skipped by
# default with one warning; strict=True raises.
UNUSABLE = {
    "empty_solution": (json.dumps({"question": "Q?", "answer": "#### 4"}).encode(), r"empty solution"),
    "empty_math_solution": (json.dumps({"problem": "P", "solution": "  ", "answer": "1"}).encode(), r"empty solution"),
    "no_answer": (json.dumps({"question": "Q?", "answer": "2+2=4"}).encode(), r"no final answer"),
    "no_boxed": (json.dumps({"problem": "P", "solution": "It is 4."}).encode(), r"no final answer"),
    "empty_boxed": (json.dumps({"problem": "P", "solution": "It is $\\boxed{}$."}).encode(), r"\\boxed\{\} .* is empty"),
    "empty_answer": (json.dumps({"problem": "P", "solution": "So 4.", "answer": " "}).encode(), r"'answer' is empty"),
    "empty_steps_list": (json.dumps({"question": "Q", "steps": [], "answer": "1"}).encode(), r"empty solution"),
}
BAD_RECORDS = MALFORMED | UNUSABLE


def _write_bad_file(tmp_path, name, blank_line=False):
    content, message = BAD_RECORDS[name]
    path = tmp_path / f"{name}.jsonl"
    gap = b"\n\n" if blank_line else b"\n"
    path.write_bytes(GOOD.encode() + gap + content + b"\n" + GOOD.encode() + b"\n")
    return path, message


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_record_raises_with_file_and_line(tmp_path, name):
    path, message = _write_bad_file(tmp_path, name, blank_line=True)
    for kw in ({}, {"strict": True}):
        with pytest.raises(DataError, match=message) as info:
            load(str(path), "test", **kw)
        assert not isinstance(info.value, UnusableRecord)
        assert info.value.path == str(path) and info.value.line == 3
        assert str(info.value).startswith(f"{path}:3: ")


@pytest.mark.parametrize("name", sorted(UNUSABLE))
def test_unusable_record_skipped_by_default_raises_when_strict(tmp_path, name, caplog):
    path, message = _write_bad_file(tmp_path, name, blank_line=True)
    with caplog.at_level(logging.WARNING, logger="jaxstep.data.problem"):
        problems = load(str(path), "test")
    assert len(problems) == 2 and problems.skipped == 1 and problems.errors[0].line == 3
    assert len(caplog.records) == 1
    assert "skipped 1 unusable record" in caplog.text and f"first: {path}:3: " in caplog.text
    with pytest.raises(UnusableRecord, match=message) as info:
        load(str(path), "test", strict=True)
    assert info.value.path == str(path) and info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: ")


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_bad_record_skipped_counted_and_logged(tmp_path, name, caplog):
    path, _ = _write_bad_file(tmp_path, name)
    with caplog.at_level(logging.WARNING):
        problems = load(str(path), "test", skip_bad_records=True)
    assert len(problems) == 2 and problems.skipped == 1
    assert problems.errors[0].line == 2
    assert "skipped 1 bad record" in caplog.text and f"{path}:2" in caplog.text


def test_unusable_records_counted_then_malformed_still_raises(tmp_path, caplog):
    # Several unusable records are skipped with ONE warning naming the first; a
    # malformed record later in the same file still raises.
    unusable = [UNUSABLE[k][0] for k in ("no_boxed", "empty_boxed", "no_answer")]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([GOOD.encode(), *unusable, GOOD.encode()]) + b"\n")
    with caplog.at_level(logging.WARNING, logger="jaxstep.data.problem"):
        problems = load(str(path), "test")
    assert len(problems) == 2 and problems.skipped == 3
    assert [e.line for e in problems.errors] == [2, 3, 4]
    assert len(caplog.records) == 1 and "skipped 3 unusable record(s)" in caplog.text
    assert f"first: {path}:2: no final answer" in caplog.text
    path.write_bytes(path.read_bytes() + MALFORMED["invalid_json"][0] + b"\n")
    with pytest.raises(DataError, match=r"mixed\.jsonl:6: invalid JSON"):
        load(str(path), "test")


def test_bad_whole_json_files(tmp_path):
    broken = tmp_path / "one.json"
    broken.write_text('{\n  "problem": "P",\n  "solution": \n}')
    with pytest.raises(DataError, match=r"one\.json:4: invalid JSON"):
        load(str(broken), "train")
    concatenated = tmp_path / "many.json"
    record = {"question": "Q?", "answer": "1+1=2\n#### 2"}
    concatenated.write_text(json.dumps(record, indent=2) + "\n" + json.dumps(record, indent=2))
    assert len(load(str(concatenated), "train")) == 2
    undecodable = tmp_path / "bytes.json"
    undecodable.write_bytes(b'{"question": "\xff"}')
    with pytest.raises(DataError, match="not valid UTF-8"):
        load(str(undecodable), "train")
    assert load(str(tmp_path), "train", skip_bad_records=True).skipped == 2
    missing = tmp_path / "nothing-here"
    missing.mkdir()
    with pytest.raises(FileNotFoundError):
        load(str(missing), "train")
