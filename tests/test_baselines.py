"""The Transformer baseline: an independent reference forward, the KV cache's identities (one call ==
split calls == token by token, branched rows of different lengths), gradients through the cache,
the parameter match with Mamba-2, and the video model, evaluation and training built on it."""

import dataclasses

import pytest
import torch
from tiny import check_split_and_step_identity, tiny_video_model

from ma2mba import Mamba2Config, State
from ma2mba.engine.lm import count_parameters
from ma2mba.engine.transformer import (
    CheckpointingModeError,
    KVCache,
    TransformerConfig,
    TransformerLM,
    mamba_params,
    matched_transformer_config,
    transformer_params,
)
from ma2mba.packaged.recipe import SMOKE, new_model, packaged_config
from ma2mba.training.evaluate import answer_batch
from ma2mba.training.trainer import Trainer
from ma2mba.video.model import VideoConfig, VideoMa2mba

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB = 50
TIGHT = dict(rtol=1e-10, atol=1e-12)


def tiny_transformer(seed=0, n_layer=2, dtype=torch.float64):
    torch.manual_seed(seed)
    lm = TransformerLM(TransformerConfig(d_model=32, n_layer=n_layer, n_head=4, d_intermediate=24, vocab_size=VOCAB))
    with torch.no_grad():  # move the norms off their initial ones so that every parameter matters
        for name, p in lm.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return lm.to(dtype)


def ids_of(shape, seed=1):
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def reference_logits(lm, ids):
    """The same model written out: rotary as complex rotations, attention as an explicit masked softmax."""
    c = lm.config
    h, dh, half = c.n_head, c.headdim, c.headdim // 2

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_epsilon) * w

    def rotary(x):  # (B, L, H, D): dims i and i + D/2 are the real and imaginary parts of one complex number
        pos = torch.arange(x.shape[1], dtype=x.dtype)[:, None]
        freqs = c.rope_theta ** (-torch.arange(half, dtype=x.dtype) / half)
        z = (
            torch.complex(x[..., :half], x[..., half:])
            * torch.polar(torch.ones_like(pos * freqs), pos * freqs)[:, None]
        )
        return torch.cat([z.real, z.imag], -1)

    b, length = ids.shape
    x = lm.backbone.embedding.weight[ids]
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    for layer in lm.backbone.layers:
        q, k, v = (rms(x, layer.norm1.weight) @ layer.attn.qkv.weight.T).view(b, length, 3, h, dh).unbind(2)
        q, k = rotary(q), rotary(k)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / dh**0.5
        weights = scores.masked_fill(future, -float("inf")).softmax(-1)
        y = torch.einsum("bhij,bjhd->bihd", weights, v).reshape(b, length, -1)
        x = x + y @ layer.attn.out_proj.weight.T
        value, gate = (rms(x, layer.norm2.weight) @ layer.mlp.fc1.weight.T).chunk(2, -1)
        x = x + (value * gate * torch.sigmoid(gate)) @ layer.mlp.fc2.weight.T
    return rms(x, lm.backbone.norm_f.weight) @ lm.lm_head.weight.T


def assert_caches_equal(a, b, **tol):
    assert torch.equal(a.valid, b.valid)
    for (ka, va), (kb, vb) in zip(a, b, strict=True):
        torch.testing.assert_close(ka, kb, **tol)
        torch.testing.assert_close(va, vb, **tol)


def test_forward_matches_an_independent_reference():
    lm = tiny_transformer()
    ids = ids_of((2, 17))
    torch.testing.assert_close(lm(ids).logits, reference_logits(lm, ids), **TIGHT)


def test_split_calls_and_steps_equal_one_call():
    lm = tiny_transformer()
    ids = ids_of((2, 21))
    full = lm(ids)
    assert isinstance(full.state, KVCache) and full.state[0][0].shape == (2, 4, 21, 8)  # (B, H, T, D)
    check_split_and_step_identity(lm, ids, ([5], [1], [3, 11, 16, 20]), full, assert_caches_equal, **TIGHT)
    torch.testing.assert_close(lm(inputs_embeds=lm.embed(ids)).logits, full.logits, **TIGHT)


def test_branches_of_different_lengths_compute_what_each_would_alone():
    """Training joins states kept at several moments (State.cat) and picks rows (map + index_select)."""
    lm = tiny_transformer()
    video = ids_of((2, 12))
    early, late = lm(video[:, :4]).state, lm(video[:, :9]).state
    joined = State.cat([early, late])  # rows: video 0 at 4, video 1 at 4, video 0 at 9, video 1 at 9
    assert isinstance(joined, KVCache) and joined.length == 9
    rows = torch.tensor([3, 0, 2])
    picked = joined.map(lambda t: t.index_select(0, rows))
    question = ids_of((3, 5), seed=2)
    out = lm(question, state=picked)
    for row, (b, moment) in enumerate([(1, 9), (0, 4), (0, 9)]):
        alone = lm(torch.cat([video[b, :moment], question[row]])[None]).logits[0, moment:]
        torch.testing.assert_close(out.logits[row], alone, **TIGHT)
    assert picked.repeat(2).valid.shape == (6, 9) and picked.clone()[0][0] is not picked[0][0]


def test_rows_that_sit_out_a_step_keep_their_cache():
    """Feeding rows different numbers of tokens, step by step: a row that sits out a step (mask False)
    must continue as if it had never been fed that step's token."""
    lm = tiny_transformer()
    prompts = [ids_of((5,), seed=3), ids_of((2,), seed=4)]
    state = lm(ids_of((2, 3))).state
    for t in range(5):
        active = torch.tensor([t < len(p) for p in prompts])
        fed = torch.stack([p[t] if t < len(p) else p[-1] for p in prompts])  # a junk token for finished rows
        state = lm.step(fed, state).state.where(active, state)
    last = lm.step(torch.tensor([7, 7]), state).logits
    for row, prompt in enumerate(prompts):
        alone = lm(torch.cat([ids_of((2, 3))[row], prompt, torch.tensor([7])])[None]).logits[0, -1]
        torch.testing.assert_close(last[row], alone, **TIGHT)


@pytest.mark.parametrize("kind", ["transformer", "mamba2"])
def test_batched_answers_equal_answers_alone(kind):
    """evaluate.answer_batch feeds questions of different lengths side by side (State.where)."""
    model = tiny_video_model()
    if kind == "transformer":
        model = transformer_video_model(model)
    questions = ["Did a blue circle appear?", "What shape appeared first?", "How many times did a red star appear?"]
    state = model.lm(inputs_embeds=torch.randn(3, 7, 32), return_logits=False).state
    batched = answer_batch(model, state, questions, max_new_tokens=4)
    alone = [
        answer_batch(model, state.map(lambda t: t[i : i + 1]), [q], max_new_tokens=4)[0]
        for i, q in enumerate(questions)
    ]
    assert batched == alone


def test_gradients_flow_through_the_cache_into_earlier_segments():
    lm = tiny_transformer()
    embeds = torch.randn(2, 15, 32, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 6, lm.config.padded_vocab_size, dtype=torch.float64)

    def grads(cut=None):  # the loss reads only the last six positions, after the cut
        lm.zero_grad()
        embeds.grad = None
        state = lm(inputs_embeds=embeds[:, :cut]).state if cut else None
        out = lm(inputs_embeds=embeds[:, cut:], state=state)
        (out.logits[:, -6:] * weights).sum().backward()
        return embeds.grad.clone(), {k: p.grad.clone() for k, p in lm.named_parameters()}

    one_call_embeds, one_call_params = grads()
    split_embeds, split_params = grads(8)
    assert split_embeds[:, :8].abs().sum() > 0  # the earlier segment gets a gradient, through the cache only
    torch.testing.assert_close(split_embeds, one_call_embeds, **TIGHT)
    for k, g in split_params.items():
        torch.testing.assert_close(g, one_call_params[k], **TIGHT, msg=k)


def test_layer_checkpointing_keeps_the_gradients_and_other_modes_are_refused():
    lm = tiny_transformer()
    ids = ids_of((2, 10))

    def grads(mode):
        lm.zero_grad()
        lm.set_checkpointing(mode)
        out = lm(ids[:, 6:], state=lm(ids[:, :6]).state)
        out.logits.pow(2).sum().backward()
        return {k: p.grad.clone() for k, p in lm.named_parameters()}

    plain, layered = grads("none"), grads("layer")
    for k in plain:
        torch.testing.assert_close(layered[k], plain[k], **TIGHT, msg=k)
    with pytest.raises(CheckpointingModeError, match="multi_axis"):
        lm.set_checkpointing("multi_axis")


@pytest.mark.parametrize(
    "mamba",
    [
        packaged_config().lm,
        Mamba2Config(d_model=1024, n_layer=48, vocab_size=50277, pad_vocab_size_multiple=16),  # mamba2-370m
        Mamba2Config(
            d_model=256, n_layer=4, vocab_size=1000, ssm_cfg=dict(expand=1)
        ),  # too small for 4 attention layers
    ],
    ids=["packaged", "370m", "expand1"],
)
def test_parameter_count_matches_mamba(mamba):
    config = matched_transformer_config(mamba)
    target = mamba_params(mamba)
    assert abs(transformer_params(config) / target - 1) <= 0.05
    assert config.d_model == mamba.d_model and config.n_layer <= mamba.n_layer
    with torch.device("meta"):
        assert count_parameters(TransformerLM(config)) == transformer_params(config)


def transformer_video_model(mamba_model: VideoMa2mba) -> VideoMa2mba:
    """The same video model with a Transformer LM of its width."""
    lm = TransformerConfig(
        d_model=32, n_layer=2, n_head=4, d_intermediate=24, vocab_size=mamba_model.config.lm.vocab_size
    )
    torch.manual_seed(0)
    return VideoMa2mba(dataclasses.replace(mamba_model.config, lm=lm), mamba_model.tokenizer).eval()


def test_video_model_folder_remembers_the_transformer(tmp_path):
    model = transformer_video_model(tiny_video_model())
    model.save_pretrained(tmp_path)
    loaded = VideoMa2mba.from_pretrained(tmp_path)
    assert isinstance(loaded.lm, TransformerLM) and loaded.config.lm == model.config.lm
    assert VideoConfig.from_dict(model.config.to_dict()) == model.config
    ids = torch.tensor([model.prompt_ids()])
    torch.testing.assert_close(loaded.lm(ids).logits, model.lm(ids).logits, rtol=0, atol=0)
    session = loaded.start_session()  # streaming works on the cache as on Mamba's state
    before = session.stats()["state_bytes"]
    session.ingest(torch.zeros(24, 40, 3, dtype=torch.uint8).numpy(), 0.0)
    assert session.stats()["state_bytes"] > before  # the cache grows with every frame


def test_trainer_runs_every_stage_with_the_transformer(tmp_path):
    # The smoke recipe without MA-GC, which a Transformer has no use for.
    smoke = [dataclasses.replace(s, checkpointing="none") for s in SMOKE]
    trainer = Trainer(tmp_path, smoke, new_model(0, lm="transformer"), bf16=False)
    trainer.run(progress=False)
    assert trainer.stage_index == len(smoke)
    loaded = VideoMa2mba.from_pretrained(tmp_path / "model")
    assert isinstance(loaded.lm, TransformerLM)
    assert loaded.config.lm == matched_transformer_config(packaged_config().lm)
