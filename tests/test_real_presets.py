"""Every real-scale preset end to end on the real data files, with only size overrides:
a random-weight tiny Qwen2 HF folder whose byte-level BPE tokenizer is trained here on
GSM8K/MATH text stands in for the hub model. SFT on GSM8K + MATH; PRMs with PRM800K
labels (BCE and Bradley-Terry) and with Monte-Carlo labels; ORMs on generator samples
and on PRM800K outcomes; the main job (PPO on the GSM8K/MATH mix, several samples per
prompt, evals on GSM8K test and MATH500, report); the eval preset. The same chain on a
random tiny OPT folder (Pan et al.'s generator family). Every stage writes report.md and
only finite metrics: a number the held-out data cannot define (an AUC over one class) is
null in the metrics line and named with a reason under `undefined`, never written as NaN.
(About 6 CPU minutes per family.)"""
import importlib.util
import math
import os
import pathlib

import pytest

from jaxstep import workdir as workdir_lib
from jaxstep.data import formatting, load
from jaxstep.metrics import UNDEFINED, read_metrics
from jaxstep.stages import evaluate, pipeline, reward_model, sft

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
EOS = "<|endoftext|>"

def preset(stem: str, name: str = "paper"):
    spec = importlib.util.spec_from_file_location(f"configs_{stem}", CONFIG_DIR / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(name)


def sizes(c, model: str):
    """The size overrides every stage gets: the tiny model, short rows, few steps."""
    c.model.hf_path = model
    c.model.attention = "einsum"  # splash is a TPU kernel (interpreted here: test_splash_attention.py)
    c.data.max_prompt_len = 96
    c.data.max_response_len = 24
    c.sampler.batch_size = 8
    c.checkpoint.every_steps = 2
    c.sft.init_from = ""
    for section in (c.sft, c.rm):
        section.steps = 2
        section.batch_size = 8
        section.log_every = 1
        section.warmup_steps = 1
    c.sft.eval_every = 0
    c.sft.eval_limit = 4
    c.rm.num_problems = 4
    c.rm.samples_per_problem = 2
    c.rm.eval_problems = 2
    c.rm.best_of_n = 2
    c.rm.mc_samples = 2
    c.rm.max_len = 0
    return c


@pytest.fixture(scope="module")
def tiny_qwen2(shared_data, tmp_path_factory) -> str:
    """A random Qwen2 HF folder with a byte-level BPE trained on GSM8K + MATH train text."""
    import tokenizers
    import torch
    import transformers
    from tokenizers import decoders, pre_tokenizers, trainers

    texts = []
    for source in ("gsm8k", "math"):
        for p in load(source, "train", data_dir=str(shared_data), limit=1500):
            texts.append(formatting.format_prompt(p) + formatting.reference_solution(p))
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=700, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS)
    sample = texts[0]
    assert tokenizer.decode(tokenizer(sample)["input_ids"]) == sample  # byte-level: lossless

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    model = transformers.Qwen2ForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny_qwen2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def check_finished(workdir: str, report: bool = True) -> dict:
    """The stage is done, wrote report.md (if asked) and only finite metrics: every
    number present is finite (no NaN/inf, also not as a string); undefined ones are
    null and named, with a reason, under `undefined`."""
    assert workdir_lib.is_done(workdir), workdir
    if report:
        assert os.path.isfile(os.path.join(workdir, "report.md")), workdir
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.isfile(metrics):
        rows = read_metrics(metrics)
        assert rows, metrics
        for row in rows:
            for key, value in row.items():
                if key == UNDEFINED:
                    assert value and all(isinstance(v, str) and v for v in value.values()), (workdir, value)
                    assert all(row.get(k, 0) is None for k in value), (workdir, value)  # null, named
                elif isinstance(value, str):
                    assert value.lower() not in ("nan", "inf", "-inf"), (workdir, key, value)
                elif isinstance(value, float):
                    assert math.isfinite(value), (workdir, key, value)
    return workdir_lib.read_summary(workdir)


@pytest.mark.slow
def test_every_real_scale_preset_on_the_real_files(tiny_qwen2, tiny_deberta, shared_data, tmp_path):
    run_paper_chain(tiny_qwen2, tiny_deberta, shared_data, tmp_path)


@pytest.fixture(scope="module")
def tiny_deberta(tmp_path_factory) -> str:
    """A random DeBERTa-v3 style encoder folder: what the paper reward-model presets'
    DeBERTa backbone (`rm.backbone = "deberta"`) starts from instead of the hub model."""
    from deberta_helpers import deberta_folder
    return str(deberta_folder(tmp_path_factory.mktemp("tiny_deberta")))


def encoder_from(c, deberta: str):
    """A preset with a DeBERTa reward model (`rm.backbone`) starts from the local folder."""
    if c.rm.get("backbone", "decoder") == "deberta":
        c.rm.init_from = deberta
    return c


def run_paper_chain(model: str, deberta: str, shared_data, root):
    """Every real-scale preset on the HF folder `model` (sizes overridden; a DeBERTa
    reward model from the folder `deberta`), in `root`."""
    data, prm800k = str(shared_data), str(shared_data / "prm800k")

    # SFT on GSM8K + MATH train (the two unusable MATH records skipped and counted).
    c = sizes(preset("sft"), model)
    c.data.data_dir = data
    summary = sft.run(c, str(root / "sft"))
    check_finished(str(root / "sft"), report=False)
    assert summary["data_skipped"] == 2 and summary["eval_problems"] == 4
    assert summary["prompts_truncated"] > 0  # MATH prompts over 96 tokens
    policy = summary["export"]

    # PRMs: PRM800K labels with BCE and with Bradley-Terry; Monte-Carlo labels.
    for name, loss in (("prm_bce", "bce"), ("prm_bt", "bt")):
        c = sizes(preset("train_prm", "prm800k"), policy)
        c.data.data_dir = data
        c.rm.init_from = policy
        c.rm.prm800k_path = prm800k
        c.rm.loss = loss
        c.rm.eval_fraction = 0.2
        s = reward_model.run(c, str(root / name))
        check_finished(str(root / name))
        assert s["labels"] == "prm800k" and s["loss"] == loss and s["data"]["eval_records"] > 0
        assert s["prompts_truncated"] > 0  # PRM800K's MATH problems
    c = encoder_from(sizes(preset("train_prm", "paper"), policy), deberta)
    c.data.data_dir = data
    c.rm.generator = policy
    s = reward_model.run(c, str(root / "prm_mc"))
    check_finished(str(root / "prm_mc"))
    assert s["labels"] == "montecarlo" and s["data"]["eval_samples"] == 4

    # ORMs: generator samples on the GSM8K/MATH mix; PRM800K outcome labels.
    c = encoder_from(sizes(preset("train_orm", "paper"), policy), deberta)
    c.data.data_dir = data
    c.rm.generator = policy
    s = reward_model.run(c, str(root / "orm"))
    check_finished(str(root / "orm"))
    assert s["stage"] == "orm" and s["data"]["train_records"] > 0
    c = sizes(preset("train_orm", "prm800k"), policy)
    c.rm.init_from = policy
    c.rm.prm800k_path = prm800k
    c.rm.eval_fraction = 0.3
    s = reward_model.run(c, str(root / "orm_prm800k"))
    check_finished(str(root / "orm_prm800k"))
    assert s["labels"] == "prm800k outcome" and s["data"]["eval_records"] > 0

    # The main job's paper preset: PPO on the 1:1 GSM8K/MATH mix with 2 samples per
    # prompt, the PRM above, evals of both policies on GSM8K test and MATH500.
    c = sizes(preset("ppo_prm_max"), model)
    c.data.data_dir = data
    c.ppo.policy, c.ppo.reward_model = policy, str(root / "prm_bce" / "export")
    c.ppo.steps, c.ppo.rollout_batch, c.ppo.minibatches = 2, 16, 2  # 8 rows per minibatch: 8 devices
    c.ppo.samples_per_prompt, c.ppo.num_prompts, c.ppo.max_steps = 2, 16, 8
    c.ppo.eval_every, c.ppo.eval_limit, c.ppo.log_every = 0, 0, 1
    c.pipeline.eval_limit, c.pipeline.eval_batch_size = 4, 8
    c.eval.max_new_tokens, c.eval.pass_k = 16, 2
    main = str(root / "main")
    s = pipeline.run(c, main)
    assert os.path.isfile(os.path.join(main, "report.md"))
    ppo_summary = check_finished(os.path.join(main, "ppo"))
    assert ppo_summary["steps"] == 2 and "data_skipped" in ppo_summary
    assert ppo_summary["prompts_truncated"] > 0  # the MATH half of the mix
    for name in ("eval_sft", "eval_ppo"):
        e = check_finished(os.path.join(main, name))
        assert set(e["accuracy"]) == {"gsm8k", "math500"} and e["data_skipped"] == 0
    assert s["eval_n"] == 8  # 4 per set

    # The eval preset: GSM8K test, MATH test and MATH500.
    c = sizes(preset("eval"), model)
    c.data.data_dir = data
    c.eval.model, c.eval.limit, c.eval.max_new_tokens, c.eval.batch_size = policy, 4, 16, 8
    e = evaluate.run(c, str(root / "eval"))
    check_finished(str(root / "eval"))
    assert set(e["accuracy"]) == {"gsm8k", "math", "math500"}
    assert all(math.isfinite(v) for v in e["accuracy"].values())
    return e


@pytest.fixture(scope="module")
def tiny_opt(shared_data, tmp_path_factory) -> str:
    """A random OPT folder (with the embedding projection of opt-350m) and a byte-level
    BPE trained on a little GSM8K + MATH text."""
    import tokenizers
    import torch
    import transformers
    from tokenizers import decoders, pre_tokenizers, trainers

    texts = [formatting.format_prompt(p) + formatting.reference_solution(p)
             for source in ("gsm8k", "math")
             for p in load(source, "train", data_dir=str(shared_data), limit=300)]
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ffn_dim=64, word_embed_proj_dim=16, do_layer_norm_before=True, max_position_embeddings=256,
        tie_word_embeddings=True, dropout=0.0, attention_dropout=0.0, pad_token_id=eos,
        bos_token_id=eos, eos_token_id=eos)
    model = transformers.OPTForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny_opt")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_every_real_scale_preset_on_an_opt_folder(tiny_opt, tiny_deberta, shared_data, tmp_path):
    """The OPT family (Pan et al.'s generator) through the whole paper chain as Qwen2:
    SFT, the PRMs and ORMs, the main job (PPO, evals, report) and the eval preset."""
    e = run_paper_chain(tiny_opt, tiny_deberta, shared_data, tmp_path)
    assert e["prompts_truncated"] > 0  # MATH test prompts over 96 tokens
