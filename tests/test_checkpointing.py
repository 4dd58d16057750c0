"""Every checkpointing mode against plain autograd, and the planner against the meter."""

import dataclasses

import pytest
import torch

from ma2mba import Mamba2Config, Mamba2LM
from ma2mba.memory import peak_bytes, without_data
from ma2mba.memory.checkpointing import (
    CheckpointingError,
    MemoryBudgetError,
    max_seq_len,
    plan,
    predict_peak_bytes,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny ops: a second thread only waits

# 5 layers, chunks of 4 tokens: lengths 23 and 19 end inside a chunk and inside a segment.
TINY = Mamba2Config(d_model=32, n_layer=5, vocab_size=50, ssm_cfg=dict(d_state=8, headdim=8, chunk_size=4))
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}

GRIDS = [  # (mode, layers_per_block, tokens_per_segment)
    ("layer", None, None),
    ("sqrt", None, None),
    ("multi_axis", 1, 4),
    ("multi_axis", 2, 8),
    ("multi_axis", 5, 12),
    ("multi_axis", 3, 100),  # one segment longer than the sequence
    ("multi_axis", None, None),  # the planner's grid
]


def train_step(lm, b, S, use_embeds, initial_state, loss_reads_state):
    """Loss and gradients of one step: every parameter, the input embeddings, the initial state."""
    lm.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (b, S), generator=g)
    dtype = lm.lm_head.weight.dtype
    embeds = lm.embed(ids).detach().requires_grad_() if use_embeds else None
    state = None
    if initial_state:
        state = lm.empty_state(b).map(lambda t: torch.randn(t.shape, generator=g, dtype=t.dtype).requires_grad_())
    out = lm(input_ids=None if use_embeds else ids, inputs_embeds=embeds, state=state)
    weights = torch.randn(out.logits.shape, generator=g, dtype=dtype)
    loss = (weights * out.logits).sum()
    if loss_reads_state:
        loss = loss + sum(
            (torch.randn(t.shape, generator=g, dtype=t.dtype) * t).sum() for pair in out.state for t in pair
        )
    loss.backward()
    grads = {name: p.grad.clone() for name, p in lm.named_parameters()}
    if use_embeds:
        grads["inputs_embeds"] = embeds.grad
    if initial_state:
        grads.update({f"initial_state.{i}": t.grad for i, t in enumerate(t for pair in state for t in pair)})
    return loss.detach(), grads


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


CASES = [  # (b, S, use_embeds, initial_state, loss_reads_state)
    (2, 23, False, False, False),
    (2, 23, True, True, True),
    (3, 19, True, True, False),
    (2, 3, True, True, True),  # shorter than a chunk
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode,l,s", GRIDS, ids=[f"{m}-l{l}-s{s}" for m, l, s in GRIDS])
def test_every_mode_gives_the_loss_and_gradients_of_plain_autograd(dtype, mode, l, s):
    torch.manual_seed(0)
    lm = Mamba2LM(TINY).to(dtype)
    for case in CASES:
        lm.set_checkpointing("none")
        ref_loss, ref = train_step(lm, *case)
        lm.set_checkpointing(mode, layers_per_block=l, tokens_per_segment=s)
        loss, got = train_step(lm, *case)
        assert rel_err(loss, ref_loss) <= TOLERANCE[dtype]
        assert got.keys() == ref.keys()
        errors = {name: rel_err(got[name], ref[name]) for name in ref}
        worst = max(errors, key=errors.get)
        assert errors[worst] <= TOLERANCE[dtype], f"case {case}: {worst} off by {errors[worst]:.2e}"


def test_backward_recomputes_one_cell_at_a_time_from_the_last():
    lm = Mamba2LM(TINY).set_checkpointing("multi_axis", layers_per_block=2, tokens_per_segment=8)
    calls = []
    for i, layer in enumerate(lm.backbone.layers):
        layer.register_forward_pre_hook(lambda mod, args, i=i: calls.append((i, args[0].shape[1])))
    hidden = lm(torch.randint(0, 50, (2, 19)), return_logits=False).hidden
    forward, calls[:] = list(calls), []
    hidden[:, -1].sum().backward()
    # segments of 8, 8, 3 tokens; blocks [0, 1], [2, 3], [4]
    assert forward == [(i, n) for n in (8, 8, 3) for i in range(5)]
    assert calls == [(i, n) for n in (3, 8, 8) for block in ([4], [2, 3], [0, 1]) for i in block]


def test_gradients_reach_each_parameter_once_per_step():
    torch.manual_seed(0)
    lm = Mamba2LM(TINY).double()
    ids = torch.randint(0, 50, (2, 23))
    lm(ids).logits.sum().backward()
    ref = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.set_checkpointing("multi_axis", layers_per_block=2, tokens_per_segment=8)
    lm(ids).logits.sum().backward()  # accumulates onto the gradients already there, as autograd does
    for name, p in lm.named_parameters():
        torch.testing.assert_close(p.grad, 2 * ref[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "bad",
    [
        dict(mode="diagonal"),
        dict(mode="multi_axis", tokens_per_segment=6),  # not a multiple of the chunk (4)
        dict(mode="multi_axis", layers_per_block=0),
        dict(mode="multi_axis", layers_per_block=6),
        dict(mode="layer", tokens_per_segment=8),
        dict(mode="multi_axis", layers_per_block=2, tokens_per_segment=8, budget_bytes=2**30),
    ],
)
def test_impossible_settings_raise_a_named_error(bad):
    with pytest.raises(CheckpointingError):
        Mamba2LM(TINY).set_checkpointing(**bad)


# --- the planner against the meter ---


@pytest.mark.parametrize("mode,l,s", [("layer", None, None), ("multi_axis", 2, 8)], ids=["layer", "multi_axis-l2-s8"])
def test_checkpointing_a_model_that_keeps_its_mixer_activations(mode, l, s):
    """use_mem_eff_path=False: the checkpointed cells keep the mixers' activations while they are
    recomputed; loss and gradients are still those of plain autograd."""
    torch.manual_seed(0)
    lm = Mamba2LM(keeping_activations(TINY)).to(torch.float64)
    for case in CASES[:2]:
        lm.set_checkpointing("none")
        ref_loss, ref = train_step(lm, *case)
        lm.set_checkpointing(mode, layers_per_block=l, tokens_per_segment=s)
        loss, got = train_step(lm, *case)
        assert rel_err(loss, ref_loss) <= TOLERANCE[torch.float64]
        for name in ref:
            assert rel_err(got[name], ref[name]) <= TOLERANCE[torch.float64], name


MID = Mamba2Config(d_model=64, n_layer=8, vocab_size=1000, ssm_cfg=dict(d_state=16, headdim=16, chunk_size=32))


def measured_step_peak(lm, seq_len, batch):
    """Peak of one step as the benchmark takes it: gradient buffers exist, loss on the last position."""
    for p in lm.parameters():
        p.grad = torch.zeros_like(p)
    ids = torch.randint(0, 1000, (batch, seq_len))

    def step():
        hidden = lm(ids, return_logits=False).hidden
        lm.lm_head(hidden[:, -1]).logsumexp(-1).sum().backward()

    return peak_bytes(step)


def keeping_activations(config: Mamba2Config) -> Mamba2Config:
    """The same model with use_mem_eff_path=False: the mixers keep their activations for backward."""
    return dataclasses.replace(config, ssm_cfg={**config.ssm_cfg, "use_mem_eff_path": False})


@pytest.mark.parametrize("keep", [False, True], ids=["recompute_mixer", "keep_mixer_activations"])
def test_planner_predicts_every_mode_within_15_percent(keep):
    S, batch = 600, 2  # 600 is not a multiple of the chunk
    config = keeping_activations(MID) if keep else MID
    lm = Mamba2LM(config)
    for mode, l, s in [
        ("none", None, None),
        ("layer", None, None),
        ("sqrt", None, None),
        ("multi_axis", 2, 64),
        ("multi_axis", 4, 256),
        ("multi_axis", None, None),
    ]:
        lm.set_checkpointing(mode, layers_per_block=l, tokens_per_segment=s)
        measured = measured_step_peak(lm, S, batch)
        predicted = predict_peak_bytes(config, S, mode, batch, layers_per_block=l, tokens_per_segment=s)
        assert predicted == pytest.approx(measured, rel=0.15), mode


def test_a_step_without_data_allocates_what_the_cpu_step_allocates():
    lm = Mamba2LM(MID).set_checkpointing("multi_axis", layers_per_block=3, tokens_per_segment=64)
    on_cpu = measured_step_peak(lm, 150, 2)
    with without_data():
        lm = Mamba2LM(MID).set_checkpointing("multi_axis", layers_per_block=3, tokens_per_segment=64)
        assert measured_step_peak(lm, 150, 2) == on_cpu


def test_planner_choice_fits_its_budget_on_the_cpu():
    S, batch = 1024, 2
    free = plan(MID, S, batch)  # no budget: the lowest peak
    none = free.peak_bytes_by_mode["none"]
    budget = int((free.peak_bytes * none) ** 0.5)  # between the best grid and no checkpointing
    chosen = plan(MID, S, batch, budget_bytes=budget)
    assert chosen.mode == "multi_axis" and chosen.peak_bytes <= budget
    torch.manual_seed(0)
    lm = Mamba2LM(MID).set_checkpointing("multi_axis", budget_bytes=budget)
    assert measured_step_peak(lm, S, batch) <= budget
    # a generous budget needs no recomputation at all
    assert plan(MID, S, batch, budget_bytes=2 * none).mode == "none"


def test_too_small_a_budget_names_the_longest_sequence_that_fits():
    budget = 64 * 2**20
    longest = max_seq_len(MID, budget, "multi_axis", batch=2)
    assert (
        predict_peak_bytes(MID, longest, "multi_axis", 2)
        <= budget
        < predict_peak_bytes(MID, longest + 1, "multi_axis", 2)
    )
    with pytest.raises(MemoryBudgetError, match=f"at most {longest} tokens") as err:
        plan(MID, 4 * longest, batch=2, budget_bytes=budget)
    assert err.value.longest_seq_len == longest
    # no checkpointing reaches least far, MA-GC farthest
    reach = [max_seq_len(MID, budget, mode, batch=2) for mode in ("none", "layer", "sqrt", "multi_axis")]
    assert min(reach) == reach[0] < reach[-1] == max(reach)


def test_the_planner_refuses_lengths_and_budgets_past_its_limits():
    from ma2mba.memory.checkpointing import (
        MAX_PLAN_BUDGET_BYTES,
        MAX_PLAN_SEQ_LEN,
        CheckpointingError,
        max_seq_len,
        plan,
        predict_peak_bytes,
    )

    config = Mamba2Config(d_model=64, n_layer=4, vocab_size=64, ssm_cfg=dict(d_state=16, headdim=16, chunk_size=32))
    with pytest.raises(CheckpointingError, match="sequences of 1 to"):
        plan(config, MAX_PLAN_SEQ_LEN + 1)
    with pytest.raises(CheckpointingError, match="sequences of 1 to"):
        predict_peak_bytes(config, 0, "multi_axis")
    with pytest.raises(CheckpointingError, match="memory budgets above 0 and up to"):
        max_seq_len(config, MAX_PLAN_BUDGET_BYTES * 2)
    with pytest.raises(CheckpointingError, match="memory budgets"):
        plan(config, 1024, budget_bytes=0)


def test_the_largest_budget_is_answered_in_bounded_memory():
    """A budget at the planner's limit used to make the search grow without bound (the grid had one column per
    chunk of the sequence); now its search stops at MAX_PLAN_SEQ_LEN and its grid has bounded columns."""
    import tracemalloc

    from ma2mba.memory.checkpointing import MAX_PLAN_BUDGET_BYTES, MAX_PLAN_SEQ_LEN, max_seq_len, segment_candidates

    # 64 layers and 32-token chunks: at 2^30 tokens the old grid had 64 x 2^25 cells
    config = Mamba2Config(d_model=64, n_layer=64, vocab_size=64, ssm_cfg=dict(d_state=16, headdim=16, chunk_size=32))
    max_seq_len(config, 2**20)  # trace the layer first: what follows is the search alone
    tracemalloc.start()
    longest = max_seq_len(config, MAX_PLAN_BUDGET_BYTES, "multi_axis")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert longest == MAX_PLAN_SEQ_LEN and peak < 256 * 2**20
    # Up to 4096 chunks every multiple of the chunk is a candidate, as before; past that a bounded spread.
    assert segment_candidates(4096 * 64, 64).tolist() == [*range(64, 4096 * 64, 64), 4096 * 64]
    many = segment_candidates(MAX_PLAN_SEQ_LEN, 256)
    assert len(many) <= 4097 and many[0] == 256 and many[-1] == MAX_PLAN_SEQ_LEN and (many % 256 == 0).all()
