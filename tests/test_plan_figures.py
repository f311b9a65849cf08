"""The plan's model-FLOP count (`jaxstep.reports.plan.matmul_params`): PaLM's N counts the
parameters a token multiplies through, not the embedding tables it gathers from. Hand
values from each architecture's layer arithmetic."""
from jaxstep import models
from jaxstep.models.config import tiny
from jaxstep.models.shapes import count_params
from jaxstep.reports import plan as plan_report
from jaxstep.reports.plan import matmul_params

V, H, L, F = 256, 128, 4, 344  # vocab, hidden, layers, MLP width


def _qwen2_layer(kv_width: int) -> int:
    attention = (H * H + H) + 2 * (H * kv_width + kv_width) + H * H  # q, k, v with bias; o
    return attention + 3 * H * F + 2 * H  # gate, up, down; two RMS norms


def _count(cfg) -> int:
    return count_params(models.abstract_params(models.Decoder(cfg)))


def test_tied_qwen2_counts_the_table_once_as_the_lm_head():
    cfg = tiny(V, hidden_size=H, num_layers=L, num_heads=4, num_kv_heads=2, intermediate_size=F)
    body = L * _qwen2_layer(kv_width=64) + H  # + the final norm
    assert _count(cfg) == V * H + body  # the table, used by the embedding and the head
    assert matmul_params(cfg, _count(cfg), lm_head=True) == body + V * H
    assert matmul_params(cfg, _count(cfg), lm_head=False) == body  # a critic: no head


def test_untied_qwen2_drops_the_embedding_keeps_the_head():
    cfg = tiny(V, hidden_size=H, num_layers=L, num_heads=4, num_kv_heads=2, intermediate_size=F,
               tie_word_embeddings=False)
    body = L * _qwen2_layer(kv_width=64) + H
    assert _count(cfg) == 2 * V * H + body
    assert matmul_params(cfg, _count(cfg), lm_head=True) == body + V * H


def test_opt_drops_the_position_table():
    cfg = tiny(V, model_type="opt", hidden_size=H, num_layers=L, num_heads=4, intermediate_size=F,
               max_position_embeddings=512)
    layer = 4 * (H * H + H) + (H * F + F) + (F * H + H) + 2 * 2 * H  # q k v o, fc1, fc2, 2 LayerNorms
    body = L * layer + 2 * H  # + the final LayerNorm
    assert _count(cfg) == V * H + (512 + 2) * H + body
    assert matmul_params(cfg, _count(cfg), lm_head=True) == body + V * H


def test_splash_kernel_flops_by_hand():
    """The FLOPs XLA cannot see inside the splash kernel: 4 L H D T_pad per token per
    forward; training 3 forwards (+1 with remat), policy and critic, x epochs."""
    from jaxstep import config_lib
    from jaxstep.reports.plan import splash_flops
    c = config_lib.base_config("t", "plan")
    m = c.model
    m.attention, m.remat, m.hf_path, m.arch = "splash", "full", "", "qwen2"
    m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads = 128, 4, 4, 2
    c.ppo.epochs = 2
    info = dict(batch=16, length=200, critic=True)  # 200 tokens pad to 256
    per_token = 4 * 4 * 4 * 32 * 256  # 4 L H D T_pad
    assert splash_flops(c, "update", info, chips=4) == 4 * 2 * 2 * per_token * 16 * 200 / 4
    assert splash_flops(c, "sft", info, chips=4) == 4 * per_token * 16 * 200 / 4
    c.model.remat = "none"
    assert splash_flops(c, "sft", info, chips=4) == 3 * per_token * 16 * 200 / 4
    c.model.attention = "einsum"
    assert splash_flops(c, "update", info, chips=4) == 0.0  # XLA counts einsum itself


def test_model_flops_by_hand():
    """6 N + 12 L H D T per token (PaLM), policy + critic x epochs; remat adds 2 N + 4 L H D T."""
    from jaxstep import config_lib
    from jaxstep.reports.plan import model_flops
    c = config_lib.base_config("t", "plan")
    m = c.model
    m.hf_path, m.arch, m.remat = "", "qwen2", "full"
    m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate_size = 128, 4, 4, 2, 344
    c.data.tokenizer_vocab_size, c.ppo.epochs = 256, 2
    n = 1000  # stand-in parameter counts: matmul_params of the tied policy = n, critic = n - V H
    info = dict(batch=8, length=100, critic=True, policy_params=n, critic_params=n)
    att = 4 * 4 * 4 * 32 * 100  # 4 L H D T
    policy, critic = 6 * n + 3 * att, 6 * (n - 256 * 128) + 3 * att
    assert model_flops(c, "update", info, chips=2) == 8 * 100 * 2 / 2 * (policy + critic)
    again = 2 * n + att + 2 * (n - 256 * 128) + att  # remat's second forward of both models
    assert model_flops(c, "update", info, chips=2, recompute=True) == 8 * 100 * 2 / 2 * (policy + critic + again)
    assert model_flops(c, "scorer", info, chips=2) is None


def _plan(peak_flops):
    return dict(topology="v5e-8", chips=8, hbm_bytes=16 << 30, peak_flops=peak_flops, mesh={"fsdp": 8},
                remat="full", logits_chunk=0, programs={}, run={})


def test_markdown_without_run_estimates_says_why():
    # A plan of the sampler alone on a topology with a published peak has per-program
    # rooflines but no PPO iteration: it must not claim the peak is unknown.
    assert "no published peak" not in plan_report.markdown(_plan(197e12))
    assert "sampler, scorer and update" in plan_report.markdown(_plan(197e12))
    assert "no published peak" in plan_report.markdown(_plan(None))
