"""Mamba2LM: the state identity (one call == split calls == token by token), gradients through the
state, bf16 autocast, and saving/loading."""

import json

import pytest
import torch
from tiny import check_split_and_step_identity

from ma2mba import Mamba2Config, Mamba2LM, State
from ma2mba.engine import mamba2
from ma2mba.engine.mamba2 import CausalConv1dFunction, GatedRMSNormFunction, RMSNormFunction, causal_conv1d

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB = 50
CHUNK = 8

CONFIGS = {
    "base": dict(),
    "groups_mlp_hdimD": dict(d_intermediate=40, ssm_cfg=dict(ngroups=2, D_has_hdim=True)),
    "residual_in_model_dtype": dict(residual_in_fp32=False),
    "layernorm_zgate_dtlimit": dict(rms_norm=False, ssm_cfg=dict(rmsnorm=False, dt_limit=(0.01, 0.5))),
    "partial_ssm": dict(ssm_cfg=dict(d_ssm=32)),  # the rest of d_inner is a gated MLP branch inside the mixer
}


def tiny_lm(name="base", dtype=torch.float64, seed=0, n_layer=2):
    extra = dict(CONFIGS[name])
    ssm_cfg = dict(d_state=8, headdim=8, chunk_size=CHUNK, **extra.pop("ssm_cfg", {}))
    torch.manual_seed(seed)
    lm = Mamba2LM(Mamba2Config(d_model=32, n_layer=n_layer, vocab_size=VOCAB, ssm_cfg=ssm_cfg, **extra))
    with torch.no_grad():  # move D and the norms off their initial ones so that every parameter matters
        for name_, p in lm.named_parameters():
            if name_.endswith(("D", "norm.weight", "norm2.weight", "norm_f.weight", "bias")):
                p.add_(0.3 * torch.randn_like(p))
    return lm.to(dtype)


def assert_states_close(a, b, **tol):
    assert len(a) == len(b)
    for (conv_a, ssm_a), (conv_b, ssm_b) in zip(a, b):
        torch.testing.assert_close(conv_a, conv_b, **tol)
        torch.testing.assert_close(ssm_a, ssm_b, **tol)


TIGHT = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_split_calls_and_steps_equal_one_call(name):
    lm = tiny_lm(name)
    ids = torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(1))
    full = lm(ids)
    assert full.logits.shape == (2, 21, lm.config.padded_vocab_size)
    # Split inside a chunk, at chunk boundaries, after one token, and into several pieces.
    check_split_and_step_identity(
        lm, ids, ([5], [CHUNK], [2 * CHUNK], [1], [3, 11, 16, 20]), full, assert_states_close, **TIGHT
    )


@pytest.mark.parametrize("name", ["base", "groups_mlp_hdimD"])
def test_forward_without_grad_equals_forward_with_grad(name):
    """Without a gradient to take, the conv and the scan keep no backward-only buffers; the
    result must not change."""
    lm = tiny_lm(name)
    ids = torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(5))
    state = lm(ids[:, :3]).state  # a non-zero initial state
    with_grad = lm(ids[:, 3:], state=state)
    with torch.no_grad():
        without = lm(ids[:, 3:], state=state)
    torch.testing.assert_close(without.logits, with_grad.logits.detach(), **TIGHT)
    assert_states_close(without.state, with_grad.state.map(torch.Tensor.detach), **TIGHT)


def test_segmented_forward_equals_one_segment():
    """Long inputs run in segments that hand the state on; the result must not depend on them."""
    lm = tiny_lm("groups_mlp_hdimD")
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(8))
    whole = lm(ids)
    lm.backbone.segment_tokens = 2 * 7  # 7 positions per sequence: segments end inside chunks
    pieces = lm(ids)
    torch.testing.assert_close(pieces.logits, whole.logits, **TIGHT)
    assert_states_close(pieces.state, whole.state, **TIGHT)


def test_inputs_embeds_and_step_from_empty_state():
    lm = tiny_lm()
    ids = torch.randint(0, VOCAB, (1, 6))
    torch.testing.assert_close(lm(inputs_embeds=lm.embed(ids)).logits, lm(ids).logits, **TIGHT)
    torch.testing.assert_close(lm.step(ids[:, :1]).logits, lm(ids[:, :1]).logits[:, 0], **TIGHT)
    with pytest.raises(ValueError):
        lm(ids, inputs_embeds=lm.embed(ids))


def test_state_passing_does_not_change_the_gradient():
    """Backward through a chain of calls that hand the state on equals backward through one call:
    the gradient into each piece's initial state is right (MA-GC's segments rely on it)."""
    lm = tiny_lm("groups_mlp_hdimD")
    ids = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(2))
    weights = torch.randn(2, 19, lm.config.padded_vocab_size, dtype=torch.float64)

    def grads(cuts):
        lm.zero_grad()
        state, loss = None, 0
        for start, stop in zip([0, *cuts], [*cuts, 19]):
            out = lm(ids[:, start:stop], state=state)
            state = out.state
            loss = loss + (out.logits * weights[:, start:stop]).sum()
        loss = loss + sum((s**2).sum() for layer in state for s in layer)  # the final state gets a gradient too
        loss.backward()
        return {k: p.grad.clone() for k, p in lm.named_parameters()}

    one_call = grads([])
    for cuts in ([7], [CHUNK, 13]):
        for k, g in grads(cuts).items():
            torch.testing.assert_close(g, one_call[k], rtol=1e-9, atol=1e-12, msg=k)


def test_keeping_activations_gives_the_same_gradients_and_keeps_more():
    """use_mem_eff_path=False (mamba_ssm's unfused path) keeps the conv, scan and norm activations
    instead of recomputing them in backward: the same gradients, more memory held between the passes."""
    ids = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(4))
    results = {}
    for keep in (False, True):
        lm = tiny_lm("groups_mlp_hdimD")
        if keep:
            lm = Mamba2LM(
                Mamba2Config.from_dict(
                    {**lm.config.to_dict(), "ssm_cfg": {**lm.config.ssm_cfg, "use_mem_eff_path": False}}
                )
            ).to(torch.float64)
            lm.load_state_dict(tiny_lm("groups_mlp_hdimD").state_dict())
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = (lm(ids).logits ** 2).mean()
        loss.backward()
        results[keep] = sum(saved), {k: p.grad for k, p in lm.named_parameters()}
    assert results[True][0] > 1.25 * results[False][0]  # 1.36x at this tiny size (the LM head weighs a lot here)
    for k, g in results[True][1].items():
        torch.testing.assert_close(g, results[False][1][k], rtol=1e-10, atol=1e-12, msg=k)


def test_gradcheck_through_the_state_path():
    lm = tiny_lm(n_layer=1)
    state = lm.empty_state(1)
    gen = torch.Generator().manual_seed(3)
    conv0, ssm0 = (torch.randn(s.shape, generator=gen, dtype=torch.float64, requires_grad=True) for s in state[0])
    embeds = torch.randn(1, 11, 32, generator=gen, dtype=torch.float64, requires_grad=True)

    def run(embeds, conv0, ssm0):
        out = lm(inputs_embeds=embeds, state=State([(conv0, ssm0)]))
        ((conv, ssm),) = out.state
        return out.hidden, conv, ssm

    assert torch.autograd.gradcheck(run, (embeds, conv0, ssm0), fast_mode=True)


@pytest.mark.parametrize("block_elements", [1 << 30, 7])  # one block; blocks of a position or two
def test_custom_functions_gradcheck(monkeypatch, block_elements):
    monkeypatch.setattr(mamba2, "CACHE_BLOCK_ELEMENTS", block_elements)
    gen = torch.Generator().manual_seed(4)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    xs, taps, bias = randn(2, 9, 5), randn(4, 5), randn(5)
    for silu in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, c: CausalConv1dFunction.apply(a, b, c, silu, True), (xs, taps, bias)
        )
        assert torch.autograd.gradcheck(lambda a, b: CausalConv1dFunction.apply(a, b, None, silu, True), (xs, taps))
    x, w = randn(3, 4, 7), randn(7)
    assert torch.autograd.gradcheck(lambda a, b: RMSNormFunction.apply(a, b, 1e-5), (x, w))
    x, z, w = randn(2, 5, 6), randn(2, 5, 6), randn(6)
    assert torch.autograd.gradcheck(lambda a, b, c: GatedRMSNormFunction.apply(a, b, c, 3, 1e-5), (x, z, w))


@pytest.mark.parametrize("block_elements", [1 << 30, 50])
def test_gated_norm_matches_the_formula(monkeypatch, block_elements):
    """norm_before_gate=False: RMSNorm(x * silu(z)) per group, written out with torch ops."""
    monkeypatch.setattr(mamba2, "CACHE_BLOCK_ELEMENTS", block_elements)
    gen = torch.Generator().manual_seed(8)
    zx = torch.randn(3, 11, 20, generator=gen, dtype=torch.float64)
    x, z, w = (
        torch.randn(3, 11, 12, generator=gen, dtype=torch.float64),
        zx[..., 4:16],
        torch.randn(12, generator=gen, dtype=torch.float64),
    )
    u = (x * torch.nn.functional.silu(z)).unflatten(-1, (3, 4))
    want = (u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + 1e-5)).flatten(-2) * w
    torch.testing.assert_close(GatedRMSNormFunction.apply(x, z, w, 4, 1e-5), want, **TIGHT)


@pytest.mark.parametrize("block_elements", [1 << 30, 13])
def test_causal_conv_matches_torch_conv1d(monkeypatch, block_elements):
    monkeypatch.setattr(mamba2, "CACHE_BLOCK_ELEMENTS", block_elements)
    gen = torch.Generator().manual_seed(5)
    x, weight, bias, state = (
        torch.randn(*s, generator=gen, dtype=torch.float64) for s in [(2, 10, 6), (6, 1, 4), (6,), (2, 6, 3)]
    )
    want = torch.nn.functional.conv1d(torch.cat([state, x.transpose(1, 2)], -1), weight, bias, groups=6).transpose(1, 2)
    for silu in (False, True):
        y, new_state = causal_conv1d(x, weight, bias, state, silu=silu)
        torch.testing.assert_close(y, torch.nn.functional.silu(want) if silu else want, **TIGHT)
        torch.testing.assert_close(new_state, x.transpose(1, 2)[..., -3:], rtol=0, atol=0)


def test_bf16_autocast_keeps_the_state_float32_and_close_to_float32():
    lm = tiny_lm("groups_mlp_hdimD", dtype=torch.float32)
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(6))
    ref = lm(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lm(ids)
        stepped = lm.step(ids[:, 0], lm.empty_state(2))
        out.logits.float().sum().backward()  # backward runs under autocast too
    for _conv, ssm in (*out.state, *stepped.state):
        assert ssm.dtype == torch.float32
    rel = (out.logits.float() - ref.logits).abs().max() / ref.logits.abs().max()
    assert rel < 3e-2
    for (_, ssm16), (_, ssm32) in zip(out.state, ref.state):
        assert (ssm16 - ssm32).abs().max() / ssm32.abs().max() < 3e-2


def test_state_helpers():
    lm = tiny_lm()
    state = lm(torch.randint(0, VOCAB, (1, 5))).state
    assert state.nbytes() == sum(t.numel() * 8 for layer in state for t in layer)
    copy = state.clone()
    assert copy[0][1] is not state[0][1] and torch.equal(copy[0][1], state[0][1])
    four = state.repeat(4)
    assert four[1][0].shape[0] == 4 and torch.equal(four[1][0][3], state[1][0][0])
    assert State.cat([state, four])[0][1].shape[0] == 5


def test_save_and_load_round_trip(tmp_path):
    lm = tiny_lm("groups_mlp_hdimD", dtype=torch.float32)
    lm.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    mamba_ssm_fields = {
        "d_model",
        "d_intermediate",
        "n_layer",
        "vocab_size",
        "ssm_cfg",
        "attn_layer_idx",
        "attn_cfg",
        "rms_norm",
        "residual_in_fp32",
        "fused_add_norm",
        "pad_vocab_size_multiple",
        "tie_embeddings",
    }
    assert set(saved) == mamba_ssm_fields  # loadable by mamba_ssm's MambaConfig(**config)
    loaded = Mamba2LM.from_pretrained(tmp_path)
    ids = torch.randint(0, VOCAB, (1, 12))
    torch.testing.assert_close(loaded(ids).logits, lm(ids).logits, rtol=0, atol=0)
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight


def test_added_mlps_start_as_the_identity_then_learn(tmp_path):
    lm = tiny_lm(dtype=torch.float32)
    ids = torch.randint(0, VOCAB, (2, 20))
    before = lm(ids).logits
    lm.add_mlp(40)
    assert lm.config.d_intermediate == 40 and all(layer.mlp is not None for layer in lm.backbone.layers)
    torch.testing.assert_close(lm(ids).logits, before, rtol=0, atol=0)  # zero output projections: same function
    with pytest.raises(ValueError, match="already"):
        lm.add_mlp(40)
    # One optimiser step moves the grown model away from the old one, and it saves and loads as an MLP model.
    opt = torch.optim.SGD(lm.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(lm(ids).logits.flatten(0, 1), ids.flatten()).backward()
    assert all(layer.mlp.fc2.weight.grad.abs().sum() > 0 for layer in lm.backbone.layers)
    opt.step()
    assert all(layer.mlp.fc2.weight.abs().sum() > 0 for layer in lm.backbone.layers)
    lm.save_pretrained(tmp_path)
    loaded = Mamba2LM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(ids).logits, lm(ids).logits, rtol=0, atol=0)
