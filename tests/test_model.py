"""The video model: template, time markers, folders, loading errors, the CLIP tower."""

import json

import numpy as np
import pytest
import torch
from tiny import random_frames, tiny_video_model

from ma2mba import load_model
from ma2mba.hub import ModelNotFoundError
from ma2mba.video.model import IGNORE, VideoMa2mba
from ma2mba.video.time_markers import time_features
from ma2mba.video.vision import VisionConfig, letterbox


def test_template_follows_the_paper():
    model = tiny_video_model()
    tok = model.tokenizer
    text = tok.hf.decode(model.prompt_ids(), skip_special_tokens=False)
    assert text.replace(" ", "") == "<|system|>youareahelpfulassistant.<|endoftext|><|user|>"
    q = model.question_ids("Did a blue circle appear?")
    assert q[-2:] == [tok.eos_id, tok.token_id("<|assistant|>")]
    assert model.answer_ids("yes")[-1] == tok.eos_id


def test_time_markers_spell_m_ss():
    feats = time_features([0, 83, 4504])  # 0:00, 1:23, 75:04
    offsets = np.cumsum([0, 16, 10, 6])
    digits = [[int(np.argmax(f[o : o + w])) for o, w in zip(offsets, (16, 10, 6, 10))] for f in feats.numpy()]
    assert digits == [[0, 0, 0, 0], [0, 1, 2, 3], [7, 5, 0, 4]]
    assert feats.sum(1).tolist() == [4, 4, 4]


def test_every_frame_gets_its_time_marker_first():
    model = tiny_video_model(tokens_per_side=2)
    visual = torch.randn(2, 3, 4, 32)  # (B, N, k, d)
    out = model.frame_embeds(visual, [5, 6, 7])
    assert out.shape == (2, 3, 5, 32)
    torch.testing.assert_close(out[:, :, 1:], visual)
    marker = model.time_embed([6])
    torch.testing.assert_close(out[1, 1, 0], marker[0])


def test_letterbox_keeps_aspect_and_centres():
    frame = np.full((30, 90, 3), 200, np.uint8)
    out = letterbox(frame, 60)
    assert out.shape == (60, 60, 3)
    rows = np.where(out[:, 30, 0] > 100)[0]
    assert rows.min() == 20 and rows.max() == 39  # 90×30 -> 60×20, centred vertically


def test_answer_loss_only_reads_labelled_positions():
    model = tiny_video_model()
    hidden = torch.randn(2, 5, 32, requires_grad=True)
    labels = torch.full((2, 5), IGNORE)
    labels[0, 2], labels[1, 4] = 3, 7
    loss = model.answer_loss(hidden, labels)
    logits = model.lm.lm_head(torch.stack([hidden[0, 2], hidden[1, 4]]))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([3, 7])))
    loss.backward()
    assert hidden.grad[0, :2].abs().sum() == 0 and hidden.grad[0, 2].abs().sum() > 0


def test_save_and_load_round_trip(tmp_path):
    model = tiny_video_model()
    model.save_pretrained(tmp_path, model_card="# tiny\n")
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json", "README.md"}
    loaded = load_model(tmp_path)
    frames = random_frames(4)
    a, b = model.start_session(), loaded.start_session()
    for t, f in enumerate(frames):
        a.ingest(f, t)
        b.ingest(f, t)
    for (_c1, s1), (_c2, s2) in zip(a.state, b.state):
        assert torch.equal(s1, s2)
    q = "How many times did a red star appear?"
    assert a.answer(q, max_new_tokens=5) == b.answer(q, max_new_tokens=5)


def test_loading_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match="Hub"):
        load_model("nobody/no-such-video-model")
    with pytest.raises(ModelNotFoundError, match="No model folder"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text(json.dumps({"d_model": 8}))
    with pytest.raises(ModelNotFoundError, match="not a Video-Ma²mba config"):
        load_model(tmp_path / "lm")


def test_clip_tower_uses_the_penultimate_layer_pooled_2x2(tmp_path):
    pytest.importorskip("transformers")
    clip_cfg = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=56, patch_size=7
    )  # 8×8 patches -> 4×4 = 16 tokens per frame
    model = tiny_video_model()
    torch.manual_seed(1)
    cfg = model.config
    cfg.vision = VisionConfig(kind="clip", clip_config=clip_cfg)
    clip_model = VideoMa2mba(cfg, model.tokenizer).eval()
    assert clip_model.vision.tokens_per_frame == 16 and clip_model.tokens_per_frame == 17
    frames = random_frames(2, h=56, w=56)
    pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    tower = clip_model.vision
    with torch.no_grad():
        got = tower(pixels)
        hidden = tower.clip(pixel_values=(pixels - tower.mean) / tower.std, output_hidden_states=True).hidden_states
        grid = hidden[-2][:, 1:].transpose(1, 2).reshape(2, 16, 8, 8)
        want = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear").flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, want)
    clip_model.save_pretrained(tmp_path)  # stores the tower's architecture: loading needs no download
    reloaded = load_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.vision(pixels), got)
