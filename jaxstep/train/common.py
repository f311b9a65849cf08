"""Helpers every stage shares: tokenizer, model + params, problems, mesh, reuse, export, decoding.

    tokenizer = get_tokenizer(config, model_path)           # data.tokenizer | export folder | tiny BPE
    model, params = build_model(config, tokenizer, path)    # HF folder / model.hf_path | tiny decoder
    problems = load_problems(config, "gsm8k:0.5,math:0.5", "train")
    mesh = make_mesh(config)
    if is_done(workdir): return read_summary(workdir)
    ...
    export(workdir, model, params, tokenizer)               # <workdir>/export, HF layout
    write_summary(workdir, summary)                         # last: marks the stage done
    results = decode_problems(model, params, tokenizer, problems, max_prompt_len=64,
                              max_new_tokens=96, batch_size=64, mesh=mesh)  # greedy
    accuracy = np.mean([r.correct for r in results])

Only process 0 writes files (summary, export); every process runs the same code.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstep import models
from jaxstep.data import Problem, batching, formatting, grading
from jaxstep.data import load as load_source
from jaxstep.data import tokenizer as tokenizer_lib
from jaxstep.parallel import distributed
from jaxstep.parallel import mesh as mesh_lib
from jaxstep.parallel import rules as rules_lib

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
EXPORT_DIR = "export"
CHECKPOINT_DIR = "checkpoints"
# Synthetic test problems are drawn with this fixed seed, so that runs with different
# `config.seed` are compared on the same problems.
EVAL_SEED = 0
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


# ----------------------------------------------------------------------------- processes

def quiet_library_logs() -> None:
    """Keeps Orbax's per-save INFO lines (absl logger) out of the progress bars."""
    logging.getLogger("absl").setLevel(logging.WARNING)


def is_main_process() -> bool:
    """True on process 0, the one that writes reports, exports and summaries."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across processes (no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415
        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- tokenizer

def synthetic_difficulty(config) -> dict[str, Any]:
    """`jaxstep.data.synthetic.Difficulty` fields from `config.data` (the synthetic_* knobs)."""
    d = config.data
    knobs = {"min_steps": d.synthetic_min_steps, "max_steps": d.synthetic_max_steps,
             "max_value": d.synthetic_max_value}
    for name in ("max_factor", "max_result", "ops"):  # optional knobs
        if f"synthetic_{name}" in d:
            knobs[name] = d[f"synthetic_{name}"]
    return knobs


def has_tokenizer(path: str) -> bool:
    """Whether local folder `path` holds tokenizer files."""
    return bool(path) and os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES)


def get_tokenizer(config, model_path: str = ""):
    """The stage's tokenizer (a transformers tokenizer).

    Order: `config.data.tokenizer` (a folder, a tokenizer.json or a hub name); else the
    tokenizer saved in `model_path` (an export folder or HF checkpoint, local or hub);
    else the tiny BPE trained on `config.data.num_train` synthetic train problems
    (deterministic in the seed and the data knobs, so every stage rebuilds the same one).
    """
    spec = config.data.tokenizer
    if spec:
        return _load_tokenizer(spec)
    if model_path:
        if has_tokenizer(model_path):
            return load_tokenizer_folder(model_path)
        if not os.path.exists(model_path):  # a hub name
            return _load_tokenizer(model_path)
    return tokenizer_lib.build_tokenizer(
        config.data.tokenizer_vocab_size, num_problems=max(config.data.num_train, 1),
        seed=config.seed, delimiter=config.data.step_delimiter, **synthetic_difficulty(config))


def load_tokenizer_folder(folder: str):
    """The tokenizer saved in `folder`, read faithfully from its tokenizer.json when it has one.

    transformers 5's AutoTokenizer rebuilds the tokenizer of a `qwen2` config.json from
    the vocabulary alone (ByteLevel pre-tokenizer), which breaks any other pipeline, such
    as the tiny Metaspace BPE; `PreTrainedTokenizerFast` keeps tokenizer.json as saved
    and takes the special tokens from tokenizer_config.json.
    """
    folder = os.fspath(folder)
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        from transformers import PreTrainedTokenizerFast  # noqa: PLC0415
        return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    return tokenizer_lib.load_tokenizer(folder)


def _load_tokenizer(spec: str):
    if os.path.isdir(spec):
        return load_tokenizer_folder(spec)
    if os.path.exists(spec):
        return tokenizer_lib.load_tokenizer(spec)
    from jaxstep.models import hf  # noqa: PLC0415
    folder = hf.resolve_path(spec)  # downloads a hub name (only when asked for one)
    return load_tokenizer_folder(folder)


# ----------------------------------------------------------------------------- model

def tiny_model_config(config, tokenizer) -> models.ModelConfig:
    """The from-scratch decoder of `config.model`, sized to the tokenizer's vocabulary."""
    m = config.model
    ids = tokenizer_lib.special_ids(tokenizer)
    return models.tiny(
        vocab_size=len(tokenizer), model_type=m.arch, hidden_size=m.hidden_size,
        num_layers=m.num_layers, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
        intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
        tie_word_embeddings=m.tie_word_embeddings, rope_theta=m.rope_theta,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
        dtype=m.dtype, param_dtype="float32")


def build_model(config, tokenizer, path: str = "", key: jax.Array | None = None):
    """`(Decoder, params)`: the HF checkpoint at `path` (or `config.model.hf_path`), else
    the tiny decoder of `config.model` initialised from `key` (default: `config.seed`).

    Params are float32 (training master weights); the model computes in `config.model.dtype`.
    Raises ValueError when the tokenizer has ids the checkpoint's vocabulary lacks.
    """
    path = path or config.model.hf_path
    if path:
        from jaxstep.models import hf  # noqa: PLC0415
        model, params = hf.load(path, dtype=jnp.dtype(config.model.dtype), param_dtype=jnp.float32)
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"{path}: the model's vocabulary has {model.config.vocab_size} rows but "
                             f"the tokenizer has {len(tokenizer)} tokens")
        return model, params
    model = models.Decoder(tiny_model_config(config, tokenizer))
    key = jax.random.key(config.seed) if key is None else key
    return model, models.init_params(model, key)


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------- problems

def parse_sources(spec: str) -> list[tuple[str, float]]:
    """ "gsm8k:0.5,math:0.5" -> [("gsm8k", 0.5), ("math", 0.5)]; a missing weight is 1.

    A colon is read as a weight only when what follows it is a number (so Windows-free
    local paths and `hf:<name>` sources pass through).
    """
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, weight = part, 1.0
        head, sep, tail = part.rpartition(":")
        if sep:
            try:
                weight = float(tail)
                name = head
            except ValueError:
                pass
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"source {part!r} in {spec!r}: the weight must be a finite number >= 0")
        out.append((name, weight))
    if not out:
        raise ValueError(f"no data source in {spec!r}")
    return out


def load_source_problems(config, source: str, split: str, limit: int | None = None) -> list[Problem]:
    """Problems of one source and split. Synthetic: `limit` problems (default
    `data.num_train` for train, `data.num_eval` otherwise) with the config's knobs;
    real sets: the first `limit` (None or 0 = all)."""
    d = config.data
    if source == "synthetic":
        n = limit if limit else (d.num_train if split == "train" else d.num_eval)
        seed = config.seed if split == "train" else EVAL_SEED
        return list(load_source("synthetic", split, limit=n, seed=seed, **synthetic_difficulty(config)))
    kw = {"data_dir": d.data_dir} if d.data_dir and source in ("gsm8k", "math", "math500") else {}
    return list(load_source(source, split, limit=limit or None,
                            skip_bad_records=d.skip_bad_records, **kw))


def mix(groups: Sequence[Sequence[Problem]], weights: Sequence[float], key: jax.Array,
        total: int | None = None) -> list[Problem]:
    """A shuffled mixture holding `round(total * w_i / sum(w))` problems of group i.

    A group with fewer problems than its share is repeated (each copy reshuffled), a
    larger one subsampled. `total` defaults to the sum of the group sizes.
    """
    if len(groups) != len(weights):
        raise ValueError(f"{len(groups)} groups but {len(weights)} weights")
    weight_sum = float(sum(weights))
    if weight_sum <= 0:
        raise ValueError(f"source weights {list(weights)} sum to 0")
    total = sum(len(g) for g in groups) if total is None else total
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    mixed: list[Problem] = []
    for group, weight in zip(groups, weights):
        share = int(round(total * weight / weight_sum))
        if share and not group:
            raise ValueError("a data source with a positive weight has no problems")
        picked: list[int] = []
        while len(picked) < share:
            picked.extend(rng.permutation(len(group))[:share - len(picked)].tolist())
        mixed.extend(group[i] for i in picked)
    return [mixed[i] for i in rng.permutation(len(mixed))]


def load_problems(config, sources: str, split: str, *, limit: int | None = None,
                  key: jax.Array | None = None) -> list[Problem]:
    """Problems of a comma list of sources `"name[:weight],..."` for one split.

    One source: its problems (`limit` as in `load_source_problems`). Several: without
    weights, their concatenation; with weights, `mix` of them (`limit` total, default
    the sum of their sizes) shuffled with `key` (default from `config.seed`).
    """
    parsed = parse_sources(sources)
    if len(parsed) == 1:
        return load_source_problems(config, parsed[0][0], split, limit)
    weighted = any(w != 1.0 for _, w in parsed)
    groups = [load_source_problems(config, name, split, None if weighted else limit)
              for name, _ in parsed]
    if not weighted:
        return [p for g in groups for p in g]
    key = jax.random.fold_in(jax.random.key(config.seed), 17) if key is None else key
    return mix(groups, [w for _, w in parsed], key, total=limit or None)


# ----------------------------------------------------------------------------- workdir

def summary_path(workdir: str) -> str:
    return os.path.join(workdir, SUMMARY_FILE)


def is_done(workdir: str) -> bool:
    """Whether the stage in `workdir` finished (its summary.json exists)."""
    return os.path.isfile(summary_path(workdir))


def read_summary(workdir: str) -> dict:
    """The finished stage's summary.json."""
    with open(summary_path(workdir), encoding="utf-8") as f:
        return json.load(f)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_summary(workdir: str, summary: dict) -> dict:
    """Writes summary.json atomically (process 0), marking the stage done; returns it."""
    summary = _jsonable(summary)
    if is_main_process():
        os.makedirs(workdir, exist_ok=True)
        tmp = summary_path(workdir) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
        os.replace(tmp, summary_path(workdir))
    sync("jaxstep_write_summary")
    return summary


def default_input(workdir: str, stage: str) -> str:
    """`<workdir>/../<stage>/export`: where a chained run keeps the product of `stage`."""
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), stage, EXPORT_DIR)


def host_params(params):
    """Params as host numpy arrays, gathered from every process when sharded across hosts."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415
        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


def export(workdir: str, model, params, tokenizer, subdir: str = EXPORT_DIR) -> str:
    """Writes `<workdir>/<subdir>` as an HF folder (config.json, model.safetensors,
    tokenizer files) that `transformers.AutoModelForCausalLM` loads; returns the path.

    The folder appears complete or not at all (written beside it, then renamed).
    """
    from jaxstep.models import hf  # noqa: PLC0415

    path = os.path.join(workdir, subdir)
    params = host_params(params)
    if is_main_process():
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        hf.save(tmp, model, params, tokenizer=tokenizer)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    sync("jaxstep_export")
    return path


# ----------------------------------------------------------------------------- mesh

def make_mesh(config) -> jax.sharding.Mesh:
    """The (data, fsdp, tensor) mesh of `config.mesh` over all devices."""
    return mesh_lib.make_mesh(config.mesh)


def round_batch(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """`batch_size` rounded up to a multiple of the data-parallel size (and of the
    process count), so every batch splits evenly over the mesh."""
    ways = math.lcm(mesh_lib.data_parallel_size(mesh), jax.process_count())
    return max(ways, -(-batch_size // ways) * ways)


def _on_mesh(x, mesh) -> bool:
    sharding = getattr(x, "sharding", None)
    return isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == mesh


def place_on_mesh(tree, mesh: jax.sharding.Mesh):
    """Leaves not yet placed on `mesh` (step counters, RNG keys, ...) replicated on it."""
    replicated = rules_lib.replicated(mesh)
    return jax.tree.map(lambda x: x if _on_mesh(x, mesh) else distributed.put_global(x, replicated), tree)


def shard_params(params, model, mesh: jax.sharding.Mesh, rules=None):
    """Places `params` of `model` (a Decoder or ScalarModel) on `mesh` by its logical
    axis names and `rules` (default: `DEFAULT_RULES`). Multi-host: every process passes
    the same params and keeps its own shards."""
    shardings = rules_lib.param_shardings(params, models.logical_specs(model), mesh, rules)
    return distributed.put_global(params, shardings)


def shard_batch(batch: dict, mesh: jax.sharding.Mesh, keys: Sequence[str] | None = None) -> dict:
    """This process's rows of `batch` (numpy, `[local_batch, ...]`) as global arrays
    split over the mesh's data axes; `keys` selects the entries to keep."""
    if keys is not None:
        batch = {k: batch[k] for k in keys}
    if jax.process_count() > 1:
        return distributed.global_batch_from_local(batch, mesh)
    return rules_lib.shard_batch(batch, mesh)


def jit_step(fn, mesh: jax.sharding.Mesh, rules=None, *, donate_argnums=(0,)):
    """`jax.jit(fn)` (first argument donated) run under `mesh` and the logical `rules`,
    so the model's activation constraints apply."""
    jitted = jax.jit(fn, donate_argnums=donate_argnums)

    def call(*args, **kwargs):
        with rules_lib.activation_sharding(mesh, rules):
            return jitted(*args, **kwargs)

    call.jitted = jitted
    return call


def to_host(tree):
    """Arrays (possibly sharded over several processes) as host numpy arrays."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


# ----------------------------------------------------------------------------- decoding

@dataclasses.dataclass(frozen=True)
class Decoded:
    """One generated solution to one problem, graded.

    Attributes:
      problem: the Problem it answers.
      sample: index of this sample among the problem's samples (0 for greedy).
      text: the response text (special tokens dropped, cut at EOS).
      tokens: the response token ids, without padding (EOS included if emitted).
      answer: the final answer extracted from `text` (None if it states none).
      correct: `grading.is_correct(text, problem.answer)`.
      finished: the response ended with EOS (False: it ran out of tokens).
    """

    problem: Problem
    sample: int
    text: str
    tokens: tuple[int, ...]
    answer: str | None
    correct: bool
    finished: bool

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


def stop_token_ids(model, tokenizer) -> tuple[int, ...]:
    """EOS ids that end a response: the tokenizer's and the model config's."""
    found = [tokenizer_lib.special_ids(tokenizer)["eos"]]
    config_eos = model.config.eos_token_id
    found += list(config_eos) if isinstance(config_eos, tuple) else [config_eos]
    return tuple(dict.fromkeys(int(t) for t in found if t is not None))


def grade(problem: Problem, text: str) -> tuple[str | None, bool]:
    """(extracted answer, correct) of a response to `problem`."""
    return grading.extract_answer(text), grading.is_correct(text, problem.answer)


def decode_problems(model, params, tokenizer, problems: Sequence[Problem], *,
                    max_prompt_len: int, max_new_tokens: int, batch_size: int,
                    greedy: bool = True, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, num_samples: int = 1, key: jax.Array | None = None,
                    mesh: jax.sharding.Mesh | None = None, rules=None, progress: bool = True,
                    desc: str = "decode", prefixes: Sequence[str] | None = None) -> list[Decoded]:
    """Generates `num_samples` responses per problem with the KV-cache sampler and grades them.

    Prompts are left-padded to `max_prompt_len` and decoded `batch_size` at a time
    (rounded up to the mesh's data-parallel size; the last batch is padded with copies
    of its first row), so the jitted sampler compiles once. Every process runs this with
    the same problems and gets the same results.

    Args:
      model, params: the Decoder and its params.
      problems: what to solve.
      greedy: argmax decoding (then `num_samples` is usually 1); otherwise sampling with
        `temperature`, `top_k` (0 = off), `top_p` (1.0 = off).
      num_samples: responses per problem (pass@k: k).
      key: sampling key (default `jax.random.key(0)`); batch i uses `fold_in(key, i)`.
      mesh: decode with the batch split over its data axes (default: all devices on data).
      rules: logical-axis rules for the model's activation constraints.
      prefixes: optional text per problem placed after its prompt (a partial solution,
        e.g. the first steps for Monte-Carlo step labels); generation continues it,
        `Decoded.text` is the continuation only and `correct` grades prefix + text.

    Returns:
      `len(problems) * num_samples` Decoded, problem-major (problem 0's samples first).
    """
    from jaxstep.models import sampler  # noqa: PLC0415

    if not problems:
        return []
    mesh = mesh if mesh is not None else mesh_lib.make_mesh()
    batch_size = round_batch(batch_size, mesh)
    key = jax.random.key(0) if key is None else key
    ids = tokenizer_lib.special_ids(tokenizer)
    eos_ids = stop_token_ids(model, tokenizer)
    if prefixes is not None and len(prefixes) != len(problems):
        raise ValueError(f"decode_problems: {len(problems)} problems but {len(prefixes)} prefixes")
    prefix_of = list(prefixes) if prefixes is not None else [""] * len(problems)
    rows = [(p, k, prefix_of[i]) for i, p in enumerate(problems) for k in range(num_samples)]
    results: list[Decoded] = []
    batches = range(0, len(rows), batch_size)
    bar = _progress(len(rows), desc, progress)
    params = place_on_mesh(params, mesh)
    for i, start in enumerate(batches):
        chunk = rows[start:start + batch_size]
        if prefixes is None:
            encoded = batching.encode_prompts([p for p, _, _ in chunk], tokenizer, max_prompt_len)
        else:
            encoded = batching.encode_prompts([formatting.format_prompt(p) + x for p, _, x in chunk],
                                              tokenizer, max_prompt_len, template="{question}")
        prompt_ids, prompt_mask = encoded["ids"], encoded["mask"]
        pad = batch_size - len(chunk)
        if pad:
            prompt_ids = np.concatenate([prompt_ids, np.repeat(prompt_ids[:1], pad, 0)])
            prompt_mask = np.concatenate([prompt_mask, np.repeat(prompt_mask[:1], pad, 0)])
        local = distributed.process_shard(np.arange(batch_size))
        inputs = shard_batch({"ids": prompt_ids[local], "mask": prompt_mask[local]}, mesh)
        with rules_lib.activation_sharding(mesh, rules):
            out = sampler.generate(
                model, params, inputs["ids"], inputs["mask"], jax.random.fold_in(key, i),
                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                top_p=top_p, greedy=greedy, eos_id=eos_ids, pad_id=ids["pad"])
        tokens, lengths = to_host((out.tokens, out.lengths))
        for (problem, sample, prefix), row, length in zip(chunk, np.asarray(tokens), np.asarray(lengths)):
            response = [int(t) for t in row[:int(length)]]
            finished = bool(response) and response[-1] in eos_ids
            text = tokenizer.decode(response, skip_special_tokens=True)
            answer, correct = grade(problem, prefix + text)
            results.append(Decoded(problem, sample, text, tuple(response), answer, correct, finished))
        bar.update(len(chunk))
    bar.close()
    return results


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm  # noqa: PLC0415
    return tqdm(total=total, desc=desc, unit="sol", dynamic_ncols=True,
                disable=not (enabled and is_main_process()))
