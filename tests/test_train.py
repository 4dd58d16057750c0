"""The training loop: every stage runs, and a paused run resumes exactly where it stopped."""

import json

import torch

from ma2mba import load_model
from ma2mba.card import package
from ma2mba.train import (RECIPES, Trainer, caption_answer, counter_targets, has_kind_tokens, join_kind_tokens, lr_at,
                          make_optimizer, new_packaged_model)
from ma2mba.data import shapeworld
from ma2mba.data.batches import prompt_state, run_frames
from ma2mba.model import packaged_config


def test_paused_and_resumed_training_equals_one_run(tmp_path):
    torch.set_num_threads(1)
    total = sum(s.steps for s in RECIPES["smoke"])
    straight = Trainer(tmp_path / "a", recipe="smoke", bf16=False)
    straight.run(progress=False)
    paused = Trainer(tmp_path / "b", recipe="smoke", bf16=False)
    paused.run(progress=False, max_steps=total // 2)
    assert paused.stage_index < len(paused.stages)
    # Paused again inside the last stage, which grows the LM (MLPs, a block, a wider state and convolution)
    # and joins the kind tokens as it begins.
    paused = Trainer(tmp_path / "b", recipe="smoke", bf16=False)  # a fresh process would do the same
    paused.run(progress=False, max_steps=total - 1 - total // 2)
    assert paused.stage.grow_mlp and paused.stage.kind_tokens and paused.step == paused.stage.steps - 1
    resumed = Trainer(tmp_path / "b", recipe="smoke", bf16=False)
    assert resumed.model.lm.config.d_intermediate == resumed.stage.grow_mlp
    assert resumed.model.lm.config.n_layer == packaged_config().lm.n_layer + len(resumed.stage.grow_layers)
    assert (resumed.model.lm.config.ssm.d_state, resumed.model.lm.config.ssm.d_conv) == (resumed.stage.grow_state,
                                                                                     resumed.stage.grow_conv)
    assert has_kind_tokens(resumed.model) and resumed.model.tokenizer.hf.to_str() == paused.model.tokenizer.hf.to_str()
    resumed.run(progress=False)
    decay_group, _, timescale_group = resumed.optimizer.param_groups  # the memory's decay learns faster
    assert timescale_group["lr"] == resumed.stage.timescale_lr * decay_group["lr"] > 0
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    logs = [[json.loads(line) for line in open(tmp_path / d / "log.jsonl")] for d in "ab"]
    assert len(logs[0]) == len(logs[1]) == total
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert {r["stage"] for r in logs[0]} == {s.name for s in RECIPES["smoke"]}
    assert (tmp_path / "a" / "model" / "model.safetensors").exists()

    # Packaging: the finished run + per-set eval files -> a loadable folder whose card has the table.
    for name, score in (("10min", 0.25), ("2min", 0.5)):
        s = {"overall": score, "n": 2, "by_kind": {"count": score}}
        (tmp_path / f"{name}.json").write_text(json.dumps({name: {"raw": s}}))
    package(tmp_path / "a", [tmp_path / "10min.json", tmp_path / "2min.json"], tmp_path / "pkg", "train cmd", "eval cmd")
    card = (tmp_path / "pkg" / "README.md").read_text()
    assert "| 2min | raw | **50.0** |" in card and "| 10min | raw | **25.0** |" in card and "train cmd" in card
    assert card.index("| 2min |") < card.index("| 10min |")
    loaded = load_model(tmp_path / "pkg")
    for (name, a), b in zip(straight.model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_schedule_warms_up_then_decays_to_a_tenth():
    stage = RECIPES["shapes"][-1]
    assert lr_at(stage, 0) < lr_at(stage, stage.warmup - 1) <= stage.lr
    assert abs(lr_at(stage, stage.steps) - 0.1 * stage.lr) < 1e-12


def test_caption_answers_list_recent_events():
    video = shapeworld.generate(3, 600)
    starts = [a.start for a in video.appearances]
    t = starts[5]
    answer = caption_answer(video, t)
    assert answer.endswith(f"{video.appearances[5].name} appears")
    assert answer.count("appears") == min(4, sum(t - 20 < s <= t for s in starts))
    quiet = next(t for t in range(20, 600) if not any(t - 20 < s <= t for s in starts))  # sparse long video
    assert caption_answer(video, quiet) == "nothing appeared"


def test_a_finished_run_goes_on_when_its_recipe_gains_a_stage(tmp_path, monkeypatch):
    """How the shipped model was made: a run that had finished its recipe resumes when a stage is
    appended (here one that grows the LM by MLPs, a block and a wider state, and joins the kind tokens),
    with the new stage's optimiser and curriculum."""
    torch.set_num_threads(1)
    full = RECIPES["smoke"]
    assert full[-1].grow_mlp and full[-1].kind_tokens
    monkeypatch.setitem(RECIPES, "smoke", full[:-1])
    Trainer(tmp_path, recipe="smoke", bf16=False).run(progress=False)
    finished = load_model(tmp_path / "model")
    monkeypatch.setitem(RECIPES, "smoke", full)
    grown = Trainer(tmp_path, recipe="smoke", bf16=False)
    assert (grown.stage_index, grown.step, grown.curriculum.level) == (len(full) - 1, 0, 0)
    assert grown.model.lm.config.d_intermediate == full[-1].grow_mlp
    assert grown.model.lm.config.n_layer == finished.lm.config.n_layer + len(full[-1].grow_layers)
    ids = torch.tensor([finished.prompt_ids()])  # no kind in it: the grown parts start as the identity
    old_vocab = len(finished.tokenizer)  # the joined kinds take rows that no token used before
    with torch.no_grad():
        torch.testing.assert_close(grown.model.lm(ids).logits[..., :old_vocab], finished.lm(ids).logits[..., :old_vocab],
                                   rtol=0, atol=0)
    grown.run(progress=False)
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["stage"] for r in log].count(full[-1].name) == full[-1].steps
    asked = {k for r in log if r["stage"] == full[-1].name for k in r["by_kind"]}
    assert asked <= set(full[-1].question_kinds)
    final = load_model(tmp_path / "model")
    assert final.lm.config.d_intermediate == full[-1].grow_mlp and has_kind_tokens(final)
    assert (final.lm.config.n_layer, final.lm.config.ssm.d_state) == (grown.model.lm.config.n_layer, full[-1].grow_state)
    assert final.lm.config.ssm.d_conv == full[-1].grow_conv


def test_joined_kind_tokens_start_as_their_words_and_read_the_same():
    model = new_packaged_model(0)
    words = model.tokenizer
    before = model.lm.backbone.embedding.weight.detach().clone()
    join_kind_tokens(model)
    joined = model.tokenizer
    assert has_kind_tokens(model) and len(joined) == len(words) + len(shapeworld.KINDS)
    embedding = model.lm.backbone.embedding.weight
    for kind in shapeworld.KINDS:
        name = shapeworld.kind_name(kind)
        (new_id,) = joined.encode(name)
        assert new_id >= len(words)
        torch.testing.assert_close(embedding[new_id], before[words.encode(name)].mean(0))
    torch.testing.assert_close(embedding[:len(words)], before[:len(words)], rtol=0, atol=0)
    question = "How many times did a Red  Star appear?"
    assert len(joined.encode(question)) == len(words.encode("How many times did a red star appear?")) - 1
    assert joined.decode(joined.encode(question)) == "how many times did a red star appear?"
    assert model.lm.lm_head.weight.data_ptr() == embedding.data_ptr()  # the answers can say "red star" in one token


def test_the_memory_decay_parameters_can_learn_at_their_own_rate():
    model = new_packaged_model(0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(make_optimizer(model.named_parameters(), 1e-3).param_groups) == 2  # by default, no group of their own
    groups = make_optimizer(model.named_parameters(), 1e-3, timescale_lr=30.0).param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, 30.0]
    own = sorted(names[id(p)] for p in groups[2]["params"])
    n_layer = model.config.lm.n_layer
    assert own == sorted(f"lm.backbone.layers.{i}.mixer.{p}" for i in range(n_layer) for p in ("A_log", "dt_bias"))
    assert all(names[id(p)] not in own for g in groups[:2] for p in g["params"])


def test_counter_targets_are_each_appearance_with_its_kinds_count_so_far():
    videos = [shapeworld.generate(seed, 40) for seed in (3, 4)]
    b, t, k, n = counter_targets(videos, 30)
    assert len(b) == sum(len([a for a in v.appearances if a.start < 30]) for v in videos) > 10
    for vb, vt, vk, vn in zip(b.tolist(), t.tolist(), k.tolist(), n.tolist()):
        kind = shapeworld.KINDS[vk]
        assert kind in [a.kind for a in videos[vb].visible(vt)] and vt < 30
        assert vn == videos[vb].counts(as_of=vt)[kind]  # appearances of the kind up to and including this one
    assert max(n.tolist()) > 1  # some kind comes back


def test_the_counter_loss_trains_its_head_and_is_logged(tmp_path):
    torch.set_num_threads(1)
    stage = RECIPES["smoke"][-1]
    assert stage.counter_loss > 0
    trainer = Trainer(tmp_path, recipe="smoke", bf16=False, model=new_packaged_model(0), start_stage=stage.name)
    before = trainer.counter_head.weight.detach().clone()
    trainer.run(progress=False, max_steps=2)
    assert not torch.equal(before, trainer.counter_head.weight)
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert all(0.0 <= r["counter"] <= 1.0 for r in records)
    resumed = Trainer(tmp_path, recipe="smoke", bf16=False)
    assert torch.equal(resumed.counter_head.weight, trainer.counter_head.weight)  # kept in the checkpoint


def test_run_frames_matches_one_pass_over_the_video():
    torch.manual_seed(0)
    model = new_packaged_model(0).eval()
    tokens = torch.randn(2, 9, model.tokens_per_frame, model.config.lm.d_model)
    start = prompt_state(model, 2)
    states, at_frames = run_frames(model, tokens, [3, 4, 9], start)
    hidden, final = model.lm.backbone(tokens.flatten(1, 2), prompt_state(model, 2))
    torch.testing.assert_close(at_frames, hidden[:, model.tokens_per_frame - 1::model.tokens_per_frame])
    for (conv_a, ssm_a), (conv_b, ssm_b) in zip(states[-1], final):
        torch.testing.assert_close(conv_a, conv_b)
        torch.testing.assert_close(ssm_a, ssm_b)


def test_autocast_defaults_to_where_bf16_pays(tmp_path):
    """Without native bf16 a CPU emulates it and autocast slows training (benchmarks/train_precision.py):
    the default follows the hardware, and an explicit choice wins."""
    from ma2mba.train import bf16_pays

    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert bf16_pays("cpu") == native
    assert Trainer(tmp_path / "auto", recipe="smoke").bf16 == native
    assert Trainer(tmp_path / "on", recipe="smoke", bf16=True).bf16 is True
    assert Trainer(tmp_path / "off", recipe="smoke", bf16=False).bf16 is False
