"""The training loop: every stage runs, and a paused run resumes exactly where it stopped."""

import json

import torch

from ma2mba import load_model
from ma2mba.data import world
from ma2mba.data.questions import caption_answer
from ma2mba.packaged.card import package
from ma2mba.packaged.recipe import SHAPES, SMOKE, new_model
from ma2mba.serving.frames import prompt_state, run_frames
from ma2mba.training.trainer import Trainer, lr_at


def smoke_trainer(out, stages=SMOKE, **kwargs) -> Trainer:
    kwargs.setdefault("bf16", False)
    return Trainer(out, stages, new_model(0), **kwargs)


def test_paused_and_resumed_training_equals_one_run(tmp_path):
    torch.set_num_threads(1)
    total = sum(s.steps for s in SMOKE)
    straight = smoke_trainer(tmp_path / "a")
    straight.run(progress=False)
    paused = smoke_trainer(tmp_path / "b")
    paused.run(progress=False, max_steps=total // 2)
    assert paused.stage_index < len(paused.stages)
    # Paused again inside the last stage, which gives every block its MLP as it begins.
    paused = smoke_trainer(tmp_path / "b")  # a fresh process would do the same
    paused.run(progress=False, max_steps=total - 1 - total // 2)
    assert paused.stage.grow_mlp and paused.step == paused.stage.steps - 1
    resumed = smoke_trainer(tmp_path / "b")
    assert resumed.model.lm.config.d_intermediate == resumed.stage.grow_mlp
    resumed.run(progress=False)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    logs = [[json.loads(line) for line in open(tmp_path / d / "log.jsonl")] for d in "ab"]
    assert len(logs[0]) == len(logs[1]) == total
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert {r["stage"] for r in logs[0]} == {s.name for s in SMOKE}
    assert (tmp_path / "a" / "model" / "model.safetensors").exists()

    # Packaging: the finished run + per-set eval files -> a loadable folder whose card has the table.
    for name, score in (("10min", 0.25), ("2min", 0.5)):
        s = {"overall": score, "n": 2, "by_kind": {"count": score}}
        (tmp_path / f"{name}.json").write_text(json.dumps({name: {"raw": s}}))
    package(
        tmp_path / "a", [tmp_path / "10min.json", tmp_path / "2min.json"], tmp_path / "pkg", "train cmd", "eval cmd"
    )
    card = (tmp_path / "pkg" / "README.md").read_text()
    assert "| 2min | raw | **50.0** |" in card and "| 10min | raw | **25.0** |" in card and "train cmd" in card
    assert card.index("| 2min |") < card.index("| 10min |")
    loaded = load_model(tmp_path / "pkg")
    for (name, a), b in zip(straight.model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_schedule_warms_up_then_decays_to_a_tenth():
    stage = SHAPES[-1]
    assert lr_at(stage, 0) < lr_at(stage, stage.warmup - 1) <= stage.lr
    assert abs(lr_at(stage, stage.steps) - 0.1 * stage.lr) < 1e-12


def test_caption_answers_list_recent_events():
    video = world.generate(3, 600)
    starts = [a.start for a in video.appearances]
    t = starts[5]
    answer = caption_answer(video, t)
    assert answer.endswith(f"{video.appearances[5].name} appears")
    assert answer.count("appears") == min(4, sum(t - 20 < s <= t for s in starts))
    quiet = next(t for t in range(20, 600) if not any(t - 20 < s <= t for s in starts))  # sparse long video
    assert caption_answer(video, quiet) == "nothing appeared"


def test_a_finished_run_goes_on_when_its_recipe_gains_a_stage(tmp_path, monkeypatch):
    """How the shipped model was made: a run that had finished its recipe resumes when a stage is
    appended (here one that gives every block an MLP), with the new stage's optimiser and curriculum."""
    torch.set_num_threads(1)
    full = SMOKE
    assert full[-1].grow_mlp
    smoke_trainer(tmp_path, full[:-1]).run(progress=False)
    finished = load_model(tmp_path / "model")
    grown = smoke_trainer(tmp_path, full)
    assert (grown.stage_index, grown.step, grown.curriculum.level) == (len(full) - 1, 0, 0)
    assert grown.model.lm.config.d_intermediate == full[-1].grow_mlp
    ids = torch.tensor([finished.prompt_ids()])  # the grown MLPs start as the identity
    with torch.no_grad():
        torch.testing.assert_close(grown.model.lm(ids).logits, finished.lm(ids).logits, rtol=0, atol=0)
    grown.run(progress=False)
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["stage"] for r in log].count(full[-1].name) == full[-1].steps
    asked = {k for r in log if r["stage"] == full[-1].name for k in r["by_kind"]}
    assert asked <= set(full[-1].question_kinds)
    assert load_model(tmp_path / "model").lm.config.d_intermediate == full[-1].grow_mlp


def test_a_checkpoint_of_other_stages_is_refused(tmp_path):
    smoke_trainer(tmp_path, SMOKE[:2]).run(progress=False, max_steps=1)
    try:
        smoke_trainer(tmp_path, SMOKE[2:])
    except ValueError as e:
        assert "vision" in str(e) and "captions" in str(e)
    else:
        raise AssertionError("a checkpoint written by other stages was resumed")


def test_run_frames_matches_one_pass_over_the_video():
    torch.manual_seed(0)
    model = new_model(0).eval()
    tokens = torch.randn(2, 9, model.tokens_per_frame, model.config.lm.d_model)
    start = prompt_state(model, 2)
    states, at_frames = run_frames(model, tokens, start, [3, 4, 9])
    hidden, final = model.lm.backbone(tokens.flatten(1, 2), prompt_state(model, 2))
    torch.testing.assert_close(at_frames, hidden[:, model.tokens_per_frame - 1 :: model.tokens_per_frame])
    for (conv_a, ssm_a), (conv_b, ssm_b) in zip(states[-1], final):
        torch.testing.assert_close(conv_a, conv_b)
        torch.testing.assert_close(ssm_a, ssm_b)


def test_autocast_defaults_to_where_bf16_pays(tmp_path):
    """Without native bf16 a CPU emulates it and autocast slows training (benchmarks/train_precision.py):
    the default follows the hardware, and an explicit choice wins."""
    from ma2mba.training.trainer import bf16_pays

    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert bf16_pays("cpu") == native
    assert Trainer(tmp_path / "auto", SMOKE, new_model(0)).bf16 == native
    assert smoke_trainer(tmp_path / "on", bf16=True).bf16 is True
    assert smoke_trainer(tmp_path / "off", bf16=False).bf16 is False
