import math

import pytest
import torch

from capitu.config import ModelConfig, load_config
from capitu.models import GPT, ContextTooLong, FeedForwardLM, build_model
from capitu.models.positions import alibi_slopes, apply_rope, rope_angles, sinusoidal
from capitu.study.variants import load_grid, variant_config

V = 97
POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "none"]
ATTENTION = [0, 2, 1]  # multi-head, grouped-query, multi-query (n_head = 4)
# the modern recipe's knobs, each alone
KNOBS = {
    "rmsnorm-nobias": dict(norm="rmsnorm", bias=False), "relu2": dict(mlp="relu2"), "swiglu": dict(mlp="swiglu"),
    "qk-norm": dict(qk_norm=True), "untied": dict(tie_embeddings=False), "softcap": dict(logit_softcap=2.0),
    "zero-init": dict(zero_init_proj=True),
}


def gpt(pos="learned", n_kv_head=0, **changes):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32, pos=pos,
                         **changes)
    return GPT(config).eval()


def cached(model, idx, cache, first):
    """The logits of idx (B, T) at positions first.. through the cache."""
    return model(idx, cache=cache, positions=torch.arange(first, first + idx.shape[1]))[0]


def ffn(**changes):
    torch.manual_seed(0)
    config = ModelConfig(kind="ffn", vocab_size=V, n_embd=16, ffn_context=3, ffn_hidden=32, **changes)
    return FeedForwardLM(config).eval()


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("n_kv_head", ATTENTION)
def test_causality(pos, n_kv_head):
    model = gpt(pos, n_kv_head)
    idx = torch.randint(0, V, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (idx[:, 9] + 1) % V
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("pos", POSITIONS)
@pytest.mark.parametrize("n_kv_head", ATTENTION)
@pytest.mark.parametrize("prompt", [1, 5])
def test_cache_parity(pos, n_kv_head, prompt):
    model = gpt(pos, n_kv_head)
    idx = torch.randint(0, V, (3, 20))
    full, _ = model(idx)
    cache = model.new_cache(batch=3, max_length=20)
    pieces = [cached(model, idx[:, :prompt], cache, 0)]
    for t in range(prompt, 20):
        pieces.append(cached(model, idx[:, t:t + 1], cache, t))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    # a second multi-token chunk after a filled cache (prefill in two parts)
    cache = model.new_cache(batch=3, max_length=20)
    chunked = torch.cat([cached(model, idx[:, :7], cache, 0), cached(model, idx[:, 7:], cache, 7)], 1)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    # a reset: a shorter sequence written from position 0 over the old one sees none of it
    torch.testing.assert_close(cached(model, idx[:, 10:15], cache, 0), model(idx[:, 10:15])[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("knob", KNOBS)
@pytest.mark.parametrize("pos, n_kv_head", [("learned", 0), ("rope", 2)])
def test_every_knob_is_causal_and_cache_exact(knob, pos, n_kv_head):
    model = gpt(pos, n_kv_head, **KNOBS[knob])
    if knob == "zero-init":  # zero projections make every block the identity: train them a little first
        for parameter in model.parameters():
            parameter.data.add_(0.05 * torch.randn_like(parameter))
    idx = torch.randint(0, V, (2, 16))
    changed = idx.clone()
    changed[:, 9] = (idx[:, 9] + 1) % V
    full, _ = model(idx)
    other, _ = model(changed)
    assert torch.equal(full[:, :9], other[:, :9]) and not torch.allclose(full[:, 9:], other[:, 9:])
    cache = model.new_cache(batch=2, max_length=16)
    pieces = [cached(model, idx[:, :5], cache, 0)] + [cached(model, idx[:, t:t + 1], cache, t) for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_knobs_change_what_they_say():
    base = gpt()
    assert isinstance(gpt(norm="rmsnorm").transformer.ln_f, torch.nn.RMSNorm)
    assert gpt(bias=False).transformer.h[0].attn.c_attn.bias is None
    untied = gpt(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() == base.num_params() + V * 32
    assert untied.flops_per_token() == base.flops_per_token()  # one output matmul either way; wte is a lookup
    # SwiGLU keeps the 4x GELU MLP's parameters: 3 x d x 8d/3 (rounded up to 8) against 2 x d x 4d
    swiglu = gpt(mlp="swiglu", bias=False).transformer.h[0].mlp
    gelu = gpt(bias=False).transformer.h[0].mlp
    assert sum(p.numel() for p in swiglu.parameters()) == 3 * 32 * 88
    assert sum(p.numel() for p in gelu.parameters()) == 2 * 32 * 128
    zero = gpt(zero_init_proj=True)
    assert all(not p.any() for name, p in zero.named_parameters() if name.endswith("c_proj.weight"))
    capped, _ = gpt(logit_softcap=0.01)(torch.randint(0, V, (1, 8)))
    assert capped.abs().max() <= 0.01 and capped.abs().max() > 0.009


@pytest.mark.parametrize("make", [gpt, ffn, lambda: gpt("alibi", 1)])
def test_last_only_gives_the_last_row_of_the_full_logits(make):
    model = make()
    idx = torch.randint(0, V, (2, 11))
    full, _ = model(idx)
    last, _ = model(idx, last_only=True)
    assert last.shape == (2, 1, V)
    torch.testing.assert_close(last, full[:, -1:])


def test_cache_bytes_scale_with_kv_heads():
    sizes = {}
    for n_kv_head in (4, 2, 1):
        model = gpt("learned", n_kv_head)
        cache = model.new_cache(batch=2, max_length=32)
        sizes[n_kv_head] = cache.nbytes
        assert cache.bytes_per_token() == model.kv_bytes_per_token(4) == 2 * 2 * n_kv_head * 8 * 4
    assert sizes[4] == 2 * sizes[2] == 4 * sizes[1]


def test_gqa_equals_mha_with_repeated_heads():
    """A GQA model whose K/V heads, repeated per group, are an MHA model's K/V heads."""
    mha, gqa = gpt("rope", 0), gpt("rope", 2)
    head_dim, groups = 8, 2
    with torch.no_grad():
        state = gqa.state_dict()
        for name, value in state.items():
            if "c_attn" not in name and name in mha.state_dict():
                mha.state_dict()[name].copy_(value)
        for layer in range(2):
            for kind in ("weight", "bias"):
                w = state[f"transformer.h.{layer}.attn.c_attn.{kind}"]
                q, k, v = w.split([4 * head_dim, 2 * head_dim, 2 * head_dim])
                def repeat(t):  # (2 heads x d, ...) -> each KV head repeated for its group of query heads
                    return t.view(2, head_dim, *t.shape[1:]).repeat_interleave(groups, 0).reshape(4 * head_dim,
                                                                                                  *t.shape[1:])
                target = mha.state_dict()[f"transformer.h.{layer}.attn.c_attn.{kind}"]
                target.copy_(torch.cat([q, repeat(k), repeat(v)]))
    idx = torch.randint(0, V, (2, 12))
    torch.testing.assert_close(mha(idx)[0], gqa(idx)[0], atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(query_position, key_position):
        cq, sq = rope_angles(torch.tensor([query_position]), 16, 10000.0)
        ck, sk = rope_angles(torch.tensor([key_position]), 16, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert score(5, 2) == pytest.approx(score(105, 102), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-4)


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8).tolist() == pytest.approx([2 ** -(i + 1) for i in range(8)])
    # 12 heads: the 8-head slopes, then every other one of the 16-head sequence (2^-0.5 ratio)
    sixteen = [2 ** (-0.5 * (i + 1)) for i in range(16)]
    assert alibi_slopes(12).tolist() == pytest.approx([2 ** -(i + 1) for i in range(8)] + sixteen[0::2][:4])


def test_sinusoidal_table_is_the_closed_form():
    table = sinusoidal(torch.arange(50), 16)
    for p in (0, 7, 49):
        for i in range(8):
            angle = p / 10000 ** (2 * i / 16)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_learned_positions_refuse_past_the_block_but_others_extrapolate():
    with pytest.raises(ContextTooLong, match="learned positions stop at 32"):
        gpt("learned")(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ContextTooLong, match="learned positions stop at 32"):
        gpt("learned").new_cache(1, 33)
    for pos in ("sinusoidal", "rope", "alibi", "none"):
        logits, _ = gpt(pos)(torch.zeros(1, 40, dtype=torch.long))
        assert logits.shape == (1, 40, V) and torch.isfinite(logits).all()


def test_feed_forward_sees_exactly_the_last_n_tokens():
    model = ffn()
    idx = torch.randint(1, V, (2, 12))
    base, _ = model(idx)
    for changed_position in range(12):
        changed = idx.clone()
        changed[:, changed_position] = (idx[:, changed_position] + 1) % V
        logits, _ = model(changed)
        differs = [(logits[:, t] - base[:, t]).abs().max().item() > 0 for t in range(12)]
        assert differs == [changed_position <= t < changed_position + 3 for t in range(12)]


def test_feed_forward_matches_a_loop_over_positions():
    model = ffn()
    idx = torch.randint(1, V, (1, 6))
    logits, _ = model(idx)
    padded = [0, 0] + idx[0].tolist()
    for t in range(6):
        x = torch.cat([model.wte.weight[i] for i in padded[t:t + 3]])
        expected = model.output(torch.tanh(model.hidden(x))) + model.direct(x)
        torch.testing.assert_close(logits[0, t], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid, variant", [(grid, v.name) for grid in ("full", "ladder") for v in load_grid(grid)])
def test_initial_loss_is_near_ln_vocab(grid, variant):
    torch.manual_seed(0)
    base = load_config("tiny", overrides=["model.vocab_size=512", "model.block_size=64"])
    model = build_model(variant_config(base, next(v for v in load_grid(grid) if v.name == variant)).model)
    idx = torch.randint(0, 512, (4, 64))
    targets = torch.randint(0, 512, (4, 64))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(512)) < 0.1


def test_widened_variants_match_the_baseline_parameter_count():
    base = load_config("small", overrides=["model.vocab_size=16384"])
    grid = {v.name: v for v in load_grid()}
    baseline = build_model(base.model).num_params()
    for name in ("gqa-wide", "mqa-wide"):
        widened = build_model(variant_config(base, grid[name]).model).num_params()
        assert abs(widened - baseline) / baseline < 1e-3
    assert build_model(variant_config(base, grid["gqa"]).model).num_params() < 0.95 * baseline


def test_gpt2_preset_has_gpt2_small_parameter_count():
    config = load_config("gpt2", overrides=["model.vocab_size=50257"]).model
    model = GPT(config)
    assert model.num_params() == 124_439_808  # GPT-2 small, as HF counts it
    n = model.num_params() - config.block_size * config.n_embd
    assert model.flops_per_token() == 6 * n + 12 * 12 * 12 * 64 * 1024


def test_ladder_rungs_inherit_every_change_below_them():
    base = load_config("tiny", overrides=["model.vocab_size=512"])
    grid = {v.name: v for v in load_grid("ladder")}
    top = variant_config(base, grid["gqa"])
    assert (top.model.pos, top.model.norm, top.model.bias, top.model.mlp, top.model.qk_norm, top.model.tie_embeddings,
            top.model.logit_softcap, top.optim.name, top.model.n_kv_head) == (
        "rope", "rmsnorm", False, "relu2", True, False, 15.0, "muon", base.model.n_head // 2)
    side = variant_config(base, grid["swiglu"])
    assert side.model.mlp == "swiglu" and not side.model.qk_norm and side.optim.name == "adamw"
    assert variant_config(base, grid["baseline"]).optim.name == "adamw"


def test_a_parent_must_come_first():
    from capitu.errors import UserError
    from capitu.study.variants import parse_grid

    with pytest.raises(UserError, match="parent 'later' is not a variant above it"):
        parse_grid({"variant": [{"name": "baseline"}, {"name": "a", "parent": "later"}, {"name": "later"}]})


@pytest.mark.parametrize("knob", KNOBS)
def test_every_knob_starts_near_ln_vocab(knob):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64, **KNOBS[knob]))
    _, loss = model(torch.randint(0, 512, (4, 64)), torch.randint(0, 512, (4, 64)))
    assert abs(loss.item() - math.log(512)) < 0.1


@pytest.mark.parametrize("make", [gpt, ffn, lambda: gpt("rope", 1, logit_softcap=2.0)])
def test_every_model_returns_logits_or_loss_the_same_way(make):
    """(logits, None) without targets, (None, mean loss) with them: the loss is the
    cross-entropy of the logits."""
    model = make()
    idx, targets = torch.randint(0, V, (2, 9)), torch.randint(0, V, (2, 9))
    logits, nothing = model(idx)
    no_logits, loss = model(idx, targets)
    assert nothing is None and no_logits is None and logits.shape == (2, 9, V)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_ffn_pads_with_the_tokenizers_end_of_text():
    from capitu.models.ffn import PAD_ID
    from capitu.tokenizer import EOT_ID

    assert PAD_ID == EOT_ID
