"""Stage sft and the shared stage helpers: loss goes down, checkpoints, HF export, exact resume."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstep import config_lib
from jaxstep.data import Problem, synthetic
from jaxstep.models import build as model_build
from jaxstep.train import optim
from jaxstep.data import sources
from jaxstep.stages import sft as stage_sft
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep import workdir as workdir_lib
from run_helpers import tiny_model


def tiny_config(steps: int = 24, **sft_overrides):
    """A config that trains a very small decoder for a few steps on synthetic data."""
    c = config_lib.base_config("test_sft", "sft")
    tiny_model(c, max_position_embeddings=256)
    c.data.num_train = 96
    c.data.num_eval = 8
    c.data.synthetic_max_steps = 2
    c.data.max_prompt_len = 64
    c.data.max_response_len = 48
    c.sft.steps = steps
    c.sft.batch_size = 8
    c.sft.learning_rate = 1e-2
    c.sft.warmup_steps = 2
    c.sft.eval_every = 0
    c.sft.eval_limit = 0
    c.sft.log_every = 4
    c.checkpoint.every_steps = 8
    for key, value in sft_overrides.items():
        c.sft[key] = value
    return c


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short SFT run shared by the tests below."""
    workdir = str(tmp_path_factory.mktemp("sft"))
    summary = stage_sft.run(tiny_config(steps=24), workdir)
    return workdir, summary


def test_short_run_lowers_loss_and_writes_everything(trained):
    workdir, summary = trained
    losses = [row["loss"] for row in _metrics(workdir) if "loss" in row]
    assert len(losses) == 6  # every 4 of 24 steps
    assert losses[-1] < losses[0] - 0.5, losses
    assert summary["steps"] == 24 and summary["final_loss"] == pytest.approx(losses[-1])
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [16, 24]
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert os.path.isfile(os.path.join(workdir, "export", name)), name
    assert os.path.isdir(os.path.join(workdir, "tb"))
    assert workdir_lib.is_done(workdir)


def test_finished_stage_is_reused_not_retrained(trained):
    workdir, summary = trained
    before = os.path.getmtime(os.path.join(workdir, "export", "model.safetensors"))
    again = stage_sft.run(tiny_config(steps=24), workdir)
    assert again == summary
    assert os.path.getmtime(os.path.join(workdir, "export", "model.safetensors")) == before


def test_export_loads_in_transformers_with_equal_logits(trained):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir, _ = trained
    path = os.path.join(workdir, "export")
    config = tiny_config()
    ours_tok = tokenizer_lib.resolve_tokenizer(config)  # rebuilt from the synthetic corpus: same tokenizer
    hf_tok = AutoTokenizer.from_pretrained(path)
    text = "Question: Ann has 5 apples. Ann buys 3 more.\nAnswer:\nAnn has 5 + 3 = 8 apples.\n#### 8"
    ids = ours_tok(text, add_special_tokens=False)["input_ids"]
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token_id == ours_tok.eos_token_id and hf_tok.pad_token_id == ours_tok.pad_token_id

    model, params = model_build.build_model(config, ours_tok, path)
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    batch = np.array([ids, ids[:10] + [ours_tok.pad_token_id] * (len(ids) - 10)], np.int32)
    mask = np.array([[1] * len(ids), [1] * 10 + [0] * (len(ids) - 10)], np.int32)
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(batch), attention_mask=jnp.asarray(mask)))
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(batch, dtype=torch.long),
                          attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


def test_resume_after_stop_matches_unbroken_run_bitwise(trained, tmp_path):
    unbroken_dir, _ = trained
    workdir = str(tmp_path / "resumed")
    stopped = stage_sft.run(tiny_config(steps=24), workdir, stop_after=12)
    assert stopped == {"stopped_at": 12, "done": False}
    assert not workdir_lib.is_done(workdir)
    assert 12 in [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))]
    summary = stage_sft.run(tiny_config(steps=24), workdir)
    assert summary["steps"] == 24
    steps_logged = [row["step"] for row in _metrics(workdir) if "loss" in row]
    assert steps_logged == [4, 8, 12, 16, 20, 24]  # continued, not restarted

    from safetensors.numpy import load_file
    a = load_file(os.path.join(unbroken_dir, "export", "model.safetensors"))
    b = load_file(os.path.join(workdir, "export", "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_loss_is_on_solution_tokens_only():
    from jaxstep.data import batching

    config = tiny_config()
    tokenizer = tokenizer_lib.resolve_tokenizer(config)
    model, params = model_build.build_model(config, tokenizer)
    problems = synthetic.generate(4, split="train", seed=1, max_steps=2)
    encoded = batching.encode_sft(problems, tokenizer, 112)
    batch = {k: jnp.asarray(encoded[k]) for k in ("ids", "mask", "loss_mask")}
    loss, aux = jax.jit(lambda p, b: stage_sft.sft_loss(model, p, b))(params, batch)

    forward = jax.jit(lambda p, b: model.apply({"params": p}, b["ids"], attention_mask=b["mask"]))
    logits = np.asarray(forward(params, batch), np.float64)
    ids, loss_mask = encoded["ids"], encoded["loss_mask"]
    terms = []
    for b in range(len(problems)):
        start = int(encoded["prompt_lens"][b])
        assert not loss_mask[b, :start].any() and loss_mask[b, start:encoded["lengths"][b]].all()
        for t in range(start, int(encoded["lengths"][b])):  # solution tokens and the EOS
            row = logits[b, t - 1]
            terms.append(np.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[b, t]])
    assert float(aux["target_tokens"]) == len(terms)
    assert float(loss) == pytest.approx(float(np.mean(terms)), rel=1e-5)


def test_learning_rate_schedule_warms_up_then_decays():
    config = tiny_config(steps=100, warmup_steps=10, learning_rate=1e-3, end_lr_ratio=0.1)
    schedule = optim.learning_rate_schedule(config.sft)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(1e-4)
    assert float(schedule(55)) < float(schedule(20))


def test_parse_sources_and_mix():
    assert sources.parse_sources("gsm8k:0.5, math:1.5") == [("gsm8k", 0.5), ("math", 1.5)]
    assert sources.parse_sources("synthetic") == [("synthetic", 1.0)]
    assert sources.parse_sources("hf:openai/gsm8k") == [("hf:openai/gsm8k", 1.0)]
    with pytest.raises(ValueError):
        sources.parse_sources(" , ")
    a = [Problem(f"a{i}", ("s",), "1", "a") for i in range(10)]
    b = [Problem(f"b{i}", ("s",), "1", "b") for i in range(3)]
    mixed = sources.mix([a, b], [1.0, 3.0], jax.random.key(0), total=40)
    assert len(mixed) == 40
    assert sum(p.source == "a" for p in mixed) == 10 and sum(p.source == "b" for p in mixed) == 30
    assert set(p.question for p in mixed if p.source == "a") == {p.question for p in a}
    again = sources.mix([a, b], [1.0, 3.0], jax.random.key(0), total=40)
    assert [p.question for p in again] == [p.question for p in mixed]


def test_summary_roundtrip_and_default_input(tmp_path):
    workdir = str(tmp_path / "stage")
    assert not workdir_lib.is_done(workdir)
    written = workdir_lib.write_summary(workdir, {"accuracy": np.float32(0.5), "n": np.int64(3),
                                             "bad": float("nan")})
    assert workdir_lib.is_done(workdir)
    assert workdir_lib.read_summary(workdir) == written == {"accuracy": 0.5, "n": 3, "bad": "nan"}
    assert workdir_lib.default_input(workdir, "sft") == str(tmp_path / "sft" / "export")
