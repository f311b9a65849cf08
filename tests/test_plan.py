"""Stage `plan` (jaxstep.stages.plan): every program of a tiny-model experiment compiled
ahead of time for cpu-8 and v5e-8 from abstract shapes, plan.json / plan.md, and a
non-zero exit naming the knobs when a program does not fit.

The v5e-8 tests need the TPU compiler (`pip install -e ".[test,tpu]"`); they skip
without it and fail when CI=true.
"""
import json
import os

import pytest

from jaxstep import config_lib
from jaxstep.models.config import ModelConfig
from jaxstep.stages import plan
from jaxstep.models import shapes

PROGRAMS = ["sft", "rm", "sampler", "scorer", "update"]


def _tiny_experiment(topology: str, **overrides):
    """The main job (PRM-max, likelihood feature) with a one-layer model and short rows."""
    c = config_lib.ppo_experiment("prm_max")
    c.stage = "plan"
    c.plan.topology = topology
    c.model.num_layers = 1
    c.model.hidden_size = 32
    c.model.num_heads = 2
    c.model.num_kv_heads = 1
    c.model.intermediate_size = 64
    c.data.max_prompt_len = 16
    c.data.max_response_len = 16
    c.sft.batch_size = c.rm.batch_size = 16
    c.ppo.rollout_batch = c.sampler.batch_size = 16
    c.ppo.max_steps = 4
    c.plan.rm_steps = 4
    for key, value in overrides.items():
        section, field = key.split("__")
        c[section][field] = value
    config_lib.validate(c)
    return c


def _check_plan(workdir, topology, chips):
    with open(os.path.join(workdir, "plan.json")) as f:
        result = json.load(f)
    assert list(result["programs"]) == PROGRAMS
    assert result["topology"] == topology and result["chips"] == chips and result["fits"]
    for name, report in result["programs"].items():
        assert report["fits"] and report["error"] is None, name
        assert report["peak_bytes"] > 0 and report["argument_bytes"] > 0, name
        assert report["flops_per_call"] > 0, name
    markdown = open(os.path.join(workdir, "plan.md")).read()
    assert all(f"| {name} | yes |" in markdown for name in PROGRAMS)
    return result


@pytest.mark.slow  # ~2.5 min on 2 busy cores (the update dominates)
def test_plan_cpu8_compiles_every_program(tmp_path):
    c = _tiny_experiment("cpu-8", model__remat="dots_no_batch", model__logits_chunk=8,
                         sft__microbatch_size=8, rm__microbatch_size=8)
    result = plan.run(c, str(tmp_path))
    _check_plan(tmp_path, "cpu-8", 8)
    assert result["programs"]["sft"]["info"]["loops"] == 2  # 16 rows in microbatches of 8
    assert result["run"] == {}  # no peak FLOP/s for a host CPU


def test_plan_oversized_batch_exits_non_zero_naming_the_knobs(tmp_path):
    # cpu-8's "HBM" is the host's RAM / 8: a 2**20-row SFT batch of 1024 tokens is far beyond it.
    c = _tiny_experiment("cpu-8", plan__programs="sft", sft__batch_size=2 ** 20, sft__max_len=1024)
    with pytest.raises(SystemExit) as e:
        plan.run(c, str(tmp_path))
    assert e.value.code != 0
    message = str(e.value.code)
    assert "sft does not fit cpu-8" in message
    for knob in ("model.remat", "sft.microbatch_size", "mesh.fsdp", "sampler.batch_size"):
        assert knob in message
    result = json.load(open(tmp_path / "plan.json"))
    assert result["fits"] is False and result["programs"]["sft"]["fits"] is False


def test_plan_cpu8_sampler_and_scorer(tmp_path):
    result = plan.run(_tiny_experiment("cpu-8", plan__programs="sampler,scorer"), str(tmp_path))
    assert list(result["programs"]) == ["sampler", "scorer"] and result["fits"]
    assert json.load(open(tmp_path / "plan.json"))["programs"]["sampler"]["info"]["new_tokens"] == 16


@pytest.mark.slow  # compiles the scorer and the accumulating update: ~4 min on 2 busy cores
def test_plan_cpu8_ppo_microbatches_chunks_and_xla_attention(tmp_path):
    """ppo.microbatch_size multiplies the update's loop count; the scorer compiles one
    sampler.batch_size chunk; model.attention=xla compiles (jax.nn.dot_product_attention)."""
    c = _tiny_experiment("cpu-8", plan__programs="scorer,update", ppo__rollout_batch=32, ppo__minibatches=2,
                         ppo__microbatch_size=8, model__attention="xla")
    result = plan.run(c, str(tmp_path))
    assert result["fits"]
    update, scorer = result["programs"]["update"]["info"], result["programs"]["scorer"]["info"]
    assert update["loops"] == 1 * 2 * 2 and update["microbatch"] == 8  # epochs x minibatches x 16 / 8
    assert (scorer["batch"], scorer["loops"]) == (16, 2)  # 32 rollouts in chunks of 16


def test_model_shapes_from_the_hub_table_and_local_folders(tmp_path):
    c = config_lib.base_config("t", "plan")
    c.model.dtype = "bfloat16"
    qwen = shapes.model_config(c, "Qwen/Qwen2-1.5B")
    assert (qwen.hidden_size, qwen.num_layers, qwen.num_heads, qwen.num_kv_heads, qwen.intermediate_size,
            qwen.vocab_size, qwen.tie_word_embeddings, qwen.dtype) == (
        1536, 28, 12, 2, 8960, 151936, True, "bfloat16")
    (tmp_path / "config.json").write_text(json.dumps(ModelConfig.to_hf_dict(qwen.replace(num_layers=3))))
    assert shapes.model_config(c, str(tmp_path)).num_layers == 3
    assert shapes.model_config(c, "").vocab_size == c.data.tokenizer_vocab_size
    with pytest.raises(ValueError, match="Qwen/Qwen2-1.5B"):
        shapes.model_config(c, "someone/unknown-model")


@pytest.mark.slow  # ~3.5 min on 2 busy cores
def test_plan_v5e8_compiles_every_program(tpu, tmp_path):
    result = plan.run(_tiny_experiment("v5e-8"), str(tmp_path))
    _check_plan(tmp_path, "v5e-8", 8)
    run = result["run"]
    assert run["seconds_per_ppo_iteration"] > 0 and 0 < run["update_mfu_estimate"] <= 1
    assert result["programs"]["update"]["hbm_bytes"] == 16 * 2 ** 30


def test_plan_v5e8_oversized_batch_does_not_fit(tpu, tmp_path):
    c = _tiny_experiment("v5e-8", plan__programs="sft", sft__batch_size=2 ** 16, sft__max_len=2048)
    with pytest.raises(SystemExit, match="sft does not fit v5e-8"):
        plan.run(c, str(tmp_path))
    assert json.load(open(tmp_path / "plan.json"))["programs"]["sft"]["fits"] is False
