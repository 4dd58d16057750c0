"""The Memory lab's model-side logic: real training steps per checkpointing mode, sweeps, budgets."""

import pytest
import torch

from ma2mba import memory_lab as lab
from ma2mba.memory.checkpointing import predict_peak_bytes


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small ops on a shared 2-core machine: a second OpenMP thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def collect(events):
    steps = [e for e in events if isinstance(e, lab.StepResult)]
    summaries = {e.mode: e for e in events if isinstance(e, lab.ModeSummary)}
    return steps, summaries


def plain_training_losses(seconds, steps, seed=0):
    """The same steps written out here, without the lab's loop and without checkpointing."""
    model = lab.build_model(lab.PRESETS["packaged"], seed)
    clips = [lab.make_clip(model, seconds, lab.LAB_SEED_BASE + seed * 1000 + i) for i in range(steps)]
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    optimizer = torch.optim.AdamW(params, lr=lab.LEARNING_RATE)
    losses = []
    for clip in clips:
        optimizer.zero_grad()
        loss = lab.clip_loss(model, clip)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_every_mode_trains_to_the_losses_of_plain_training():
    steps, summaries = collect(list(lab.train("packaged", lab.MODES, clip_seconds=24, steps=3)))
    assert list(summaries) == list(lab.MODES)
    reference = plain_training_losses(24, 3)
    assert reference[-1] < reference[0]  # the steps really train
    for mode, summary in summaries.items():
        assert summary.skipped is None
        assert summary.losses == pytest.approx(reference, rel=1e-5), mode
        assert [s.loss for s in steps if s.mode == mode] == summary.losses
        assert summary.seconds_per_step > 0
    # one recorded timeline per mode, on its first step, whose maximum is the reported peak
    recorded = [s for s in steps if s.timeline]
    assert [s.mode for s in recorded] == list(lab.MODES) and all(s.step == 0 for s in recorded)
    for s in recorded:
        assert (
            len(s.timeline) <= lab.TIMELINE_POINTS and max(s.timeline) == s.peak_bytes == summaries[s.mode].peak_bytes
        )


def test_checkpointing_keeps_less_and_the_planner_predicts_it():
    _, summaries = collect(list(lab.train("packaged", lab.MODES, clip_seconds=120, steps=1)))
    peaks = {mode: s.peak_bytes for mode, s in summaries.items()}
    assert peaks["multi_axis"] < peaks["layer"] < peaks["none"]
    assert peaks["sqrt"] < peaks["none"]
    for mode, s in summaries.items():
        # the planner models the LM alone; the lab's step adds the projector and time markers
        assert s.predicted_bytes == pytest.approx(s.peak_bytes, rel=0.3), mode
    grid = summaries["multi_axis"]
    assert (grid.layers_per_block, grid.tokens_per_segment) == lab.planned_grid(
        lab.PRESETS["packaged"].lm, grid.tokens, "multi_axis"
    )
    assert grid.tokens_per_segment < grid.tokens  # MA-GC cuts the sequence too
    assert (summaries["none"].layers_per_block, summaries["layer"].layers_per_block) == (6, 1)


def test_recompute_overhead_is_relative_to_no_checkpointing():
    make = lambda mode, seconds: lab.ModeSummary(mode, 100, 1, 100, 0, seconds_per_step=seconds)
    overhead = lab.recompute_overhead([make("none", 2.0), make("layer", 3.0), make("multi_axis", 5.0)])
    assert overhead == pytest.approx({"none": 0.0, "layer": 0.5, "multi_axis": 1.5})
    assert lab.recompute_overhead([make("layer", 3.0)]) == {}


def test_guardrails_refuse_or_skip_with_a_reason():
    limits = lab.Limits(max_clip_seconds=60, max_steps=3, max_tokens=400, max_peak_bytes=8 * 2**20)
    for kwargs, message in [
        (dict(clip_seconds=90), "between 4 and 60 seconds"),
        (dict(steps=4), "between 1 and 3"),
        (dict(modes=["diagonal"]), "Choose one or more"),
        (dict(modes=[]), "Choose one or more"),
        (dict(preset_name="paper 2.7B"), "too large to train"),
        (dict(preset_name="large", clip_seconds=60), "token cap"),  # the 400-token cap of these limits
    ]:
        args = dict(preset_name="packaged", modes=["none"], clip_seconds=20, steps=1) | kwargs
        with pytest.raises(lab.LabError, match=message):
            next(lab.train(**args, limits=limits))
    with pytest.raises(lab.LabError, match="above its 1024-token cap on this machine: use at most 96 s"):
        next(lab.train("large", ["none"], 200, 1))  # default limits; bigger models get shorter clips
    # 150 s of the packaged model: "none" needs more than 16 MiB and is skipped; MA-GC runs
    limits = lab.Limits(max_peak_bytes=16 * 2**20)
    _, summaries = collect(list(lab.train("packaged", ["none", "multi_axis"], 150, 1, limits=limits)))
    assert summaries["none"].skipped.endswith("above this machine's 16 MiB cap")
    assert summaries["none"].peak_bytes is None and summaries["multi_axis"].peak_bytes < 16 * 2**20


def test_sweep_measures_and_predicts_every_mode_at_every_length():
    limits = lab.Limits(max_clip_seconds=128, max_tokens=400)
    points = list(lab.sweep("packaged", ["none", "multi_axis"], limits=limits))
    lengths = lab.sweep_lengths(lab.PRESETS["packaged"], limits)
    assert lengths == [8, 16, 32, 64, 128] and len(points) == 2 * len(lengths)
    by_mode = {m: [p for p in points if p.mode == m] for m in ("none", "multi_axis")}
    for mode, ps in by_mode.items():
        assert [p.seconds for p in ps] == lengths
        for p in ps:
            assert p.predicted_bytes == predict_peak_bytes(lab.PRESETS["packaged"].lm, p.tokens, mode)
            assert p.measured_bytes == pytest.approx(p.predicted_bytes, rel=0.35), (mode, p.seconds)
    none = [p.measured_bytes for p in by_mode["none"]]
    assert none == sorted(none) and none[-1] > 2 * none[0]  # grows with the length
    assert by_mode["multi_axis"][-1].measured_bytes < none[-1] / 3


def test_longest_clips_fit_the_budget_and_one_second_more_does_not():
    budget = 64 * 2**20
    preset = lab.PRESETS["medium"]
    reach = {r.mode: r for r in lab.longest_clips("medium", budget)}
    assert list(reach) == list(lab.MODES)
    for mode, r in reach.items():
        assert (
            predict_peak_bytes(preset.lm, r.tokens, mode) <= budget < predict_peak_bytes(preset.lm, r.tokens + 1, mode)
        )
        assert lab.sequence_tokens(preset, r.seconds) <= r.tokens < lab.sequence_tokens(preset, r.seconds + 1)
    assert reach["none"].seconds < reach["layer"].seconds < reach["multi_axis"].seconds
    with pytest.raises(lab.LabError, match="positive"):
        lab.longest_clips("medium", 0)


def test_kv_cache_bytes_match_a_real_transformer_cache():
    from transformers import GPT2Config, GPT2LMHeadModel

    from ma2mba import Mamba2Config

    n_layer, d_model, tokens = 3, 32, 11
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            n_layer=n_layer, n_embd=d_model, n_head=4, vocab_size=50, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    ).eval()
    with torch.no_grad():
        cache = gpt2(torch.randint(0, 50, (1, tokens)), use_cache=True).past_key_values
    real = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert lab.kv_cache_bytes(Mamba2Config(d_model=d_model, n_layer=n_layer), tokens, bytes_per_value=4) == real


def test_state_bytes_match_a_live_session():
    from ma2mba import load_model

    model = load_model()
    assert lab.state_bytes(model.config.lm) == model.start_session().stats()["state_bytes"]
