"""New tokens/s of jaxstep's sampler vs transformers' `generate`, same random Qwen2 weights.

    python bench/sampler.py            # the issue's setting (CPU, float32)
    python bench/sampler.py --quick    # a smaller smoke run
    python bench/sampler.py --new 128,512 --batch 32,128   # one row per (batch, new, mode)
    python bench/sampler.py --tied     # the LM head tied to the embedding

Model: Qwen2, hidden 256, 4 layers, 4 heads, 2 KV heads, intermediate 688, vocab
32000, an untied LM head unless `--tied` (random weights, std 0.02 as HF's init);
batch 32, prompts of 48-64 tokens (left-padded to 64), 128 new tokens, no EOS so
both produce exactly 128 per row.
"sampling" is plain sampling (temperature 1, no top-k/top-p, set explicitly on both
sides); "greedy" is argmax, tokens only on both sides (ours with `with_logprobs=False`,
as the evals run it; transformers' `generate` returns no scores by default; plain
sampling's log-probs come free with the sample and are kept). Our compile time is
excluded from the rate and reported; each side's time is the best of `--repeats` runs.
Both sides run in this one process as a library caller runs them: without the malloc
tunable that `python -m jaxstep.main` adds (`jaxstep.host_memory`; set
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` to measure both sides with it).
transformers runs with 1 and with all torch threads and keeps the faster (on a busy
2-core machine one thread is often several times faster: OpenMP threads spin against
other processes).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from jaxstep import models  # noqa: E402
from jaxstep.models import hf, sampler  # noqa: E402


def _ints(text: str) -> list[int]:
    """`"128,512"` -> [128, 512]."""
    return [int(x) for x in text.split(",") if x.strip()]


def build(args):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=args.intermediate,
        max_position_embeddings=1024, tie_word_embeddings=args.tied, bos_token_id=None,
        eos_token_id=None, pad_token_id=0)
    hf_model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    our_config = models.ModelConfig.from_hf_dict(config.to_dict())
    params = hf.params_from_tensors(our_config, state.keys(), state.__getitem__)
    return hf_model, models.Decoder(our_config), params


def prompts(args):
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.prompt - 16, args.prompt + 1, args.batch)
    ids = rng.integers(1, args.vocab, (args.batch, args.prompt)).astype(np.int32)
    mask = (np.arange(args.prompt)[None] >= args.prompt - lengths[:, None]).astype(np.int32)
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


def time_ours(model, params, ids, mask, greedy, args):
    block = {} if args.block is None else {"decode_block": args.block}
    run = lambda seed: models.generate(  # noqa: E731
        model, params, ids, mask, jax.random.key(seed), max_new_tokens=args.new,
        greedy=greedy, temperature=1.0, eos_id=None, pad_id=0, with_logprobs=not greedy, **block)
    start = time.perf_counter()
    out = jax.block_until_ready(run(0))
    first = time.perf_counter() - start
    best = float("inf")
    for r in range(args.repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(run(r + 1))
        best = min(best, time.perf_counter() - start)
    return best, first - best, int(out.lengths.sum()), np.asarray(out.tokens)


def time_hf(hf_model, ids, mask, greedy, args):
    """Best time over torch thread counts (1 and all cores): (seconds, tokens, new ids, threads)."""
    best = None
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        result = _time_hf(hf_model, ids, mask, greedy, args) + (threads,)
        if best is None or result[0] < best[0]:
            best = result
    return best


def _time_hf(hf_model, ids, mask, greedy, args):
    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    kwargs = dict(max_new_tokens=args.new, min_new_tokens=0, pad_token_id=0, eos_token_id=None)
    if greedy:
        kwargs.update(do_sample=False, top_k=None, top_p=None, temperature=None)
    else:
        kwargs.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    best, out = float("inf"), None
    for r in range(args.repeats):
        torch.manual_seed(r)
        start = time.perf_counter()
        with torch.no_grad():
            out = hf_model.generate(input_ids=ids_t, attention_mask=mask_t, **kwargs)
        best = min(best, time.perf_counter() - start)
    new = out[:, ids.shape[1]:].numpy()
    return best, int(new.size), new


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=_ints, default=[32], help="one or more, e.g. 32,128")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=_ints, default=[128], help="one or more, e.g. 128,512")
    parser.add_argument("--block", type=int, default=None,
                        help="our decode_block (default: the sampler's DECODE_BLOCK; 0 = one segment)")
    parser.add_argument("--modes", default="sampling,greedy")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tied", action="store_true",
                        help="tie the LM head to the embedding (as Qwen2.5 up to 3B, OPT); default untied")
    parser.add_argument("--quick", action="store_true", help="batch 8, 32 new tokens")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.new, args.repeats = [8], [32], 1
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} (jaxstep.host_memory)")
    print(f"devices: {jax.devices()}  cpus: {os.cpu_count()}  load average: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    block = sampler.DECODE_BLOCK if args.block is None else args.block
    print(f"Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {args.vocab} "
          f"({'tied' if args.tied else 'untied'} LM head); batch "
          f"{','.join(map(str, args.batch))}, prompt {args.prompt}, "
          f"{','.join(map(str, args.new))} new tokens; float32; our decode_block {block}")
    hf_model, model, params = build(args)
    print(f"{'batch':>5s} {'new':>5s} {'mode':9s} {'jaxstep tok/s':>14s} {'transformers tok/s':>19s} "
          f"{'ratio':>7s} {'our compile s':>14s} {'torch threads':>14s} {'greedy same':>12s}")
    for batch in args.batch:
        for new in args.new:
            run_args = argparse.Namespace(**{**vars(args), "batch": batch, "new": new})
            ids, mask = prompts(run_args)
            for mode in args.modes.split(","):
                greedy = mode == "greedy"
                ours_s, compile_s, ours_n, our_tokens = time_ours(model, params, ids, mask, greedy, run_args)
                hf_s, hf_n, hf_tokens, threads = time_hf(hf_model, ids, mask, greedy, run_args)
                ours_rate, hf_rate = ours_n / ours_s, hf_n / hf_s
                # random weights: near-ties can flip an argmax, after which rows diverge
                same = f"{(our_tokens == hf_tokens).mean():.1%}" if greedy else "-"
                print(f"{batch:5d} {new:5d} {mode:9s} {ours_rate:14.0f} {hf_rate:19.0f} "
                      f"{ours_rate / hf_rate:6.2f}x {compile_s:14.1f} {threads:14d} {same:>12s}",
                      flush=True)


if __name__ == "__main__":
    main()
