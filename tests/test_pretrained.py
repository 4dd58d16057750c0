"""Loading mamba_ssm checkpoints: a tiny one written here in mamba_ssm's exact format gives the logits of
an independent reference forward (written here, from the Mamba-2 definition), and of Hugging Face
transformers' Mamba2ForCausalLM; the Hub code path finds folders, safetensors, and the HF cache."""

import json
import math

import pytest
import torch

from ma2mba import Mamba2LM
from ma2mba.hub import ModelNotFoundError

pytestmark = pytest.mark.usefixtures("single_thread")

# state-spaces/mamba2-130m's config.json, field for field, at a tiny width.
MAMBA2_130M_STYLE = {
    "d_model": 64,
    "d_intermediate": 0,
    "n_layer": 2,
    "vocab_size": 100,
    "ssm_cfg": {"layer": "Mamba2"},
    "attn_layer_idx": [],
    "attn_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 16,
    "tie_embeddings": True,
}
# The same with ngroups > 1, a smaller state and several chunks per call.
GROUPED = {
    **MAMBA2_130M_STYLE,
    "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 8},
}


def sizes(config):
    """mamba_ssm's Mamba2 defaults: d_state 128, d_conv 4, expand 2, headdim 64, ngroups 1."""
    ssm = {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, **config["ssm_cfg"]}
    d_inner = ssm["expand"] * config["d_model"]
    vocab = math.ceil(config["vocab_size"] / config["pad_vocab_size_multiple"]) * config["pad_vocab_size_multiple"]
    return dict(
        ssm,
        d_inner=d_inner,
        nheads=d_inner // ssm["headdim"],
        vocab=vocab,
        conv_dim=d_inner + 2 * ssm["ngroups"] * ssm["d_state"],
    )


def random_mamba_ssm_weights(config, seed=0):
    """A state dict with MambaLMHeadModel's key names and shapes, and plausible trained-looking values."""
    s = sizes(config)
    d, gen = config["d_model"], torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=gen) * std

    sd = {"backbone.embedding.weight": randn(s["vocab"], d, std=0.5)}
    for i in range(config["n_layer"]):
        p = f"backbone.layers.{i}."
        dt = torch.exp(torch.rand(s["nheads"], generator=gen) * math.log(100) + math.log(1e-3))  # in [1e-3, 0.1]
        sd.update(
            {
                p + "norm.weight": 1 + randn(d, std=0.1),
                p + "mixer.in_proj.weight": randn(
                    2 * s["d_inner"] + 2 * s["ngroups"] * s["d_state"] + s["nheads"], d, std=d**-0.5
                ),
                p + "mixer.conv1d.weight": randn(s["conv_dim"], 1, s["d_conv"], std=0.5),
                p + "mixer.conv1d.bias": randn(s["conv_dim"], std=0.1),
                p + "mixer.dt_bias": dt + torch.log(-torch.expm1(-dt)),
                p + "mixer.A_log": torch.log(1 + 15 * torch.rand(s["nheads"], generator=gen)),
                p + "mixer.D": 1 + randn(s["nheads"], std=0.2),
                p + "mixer.norm.weight": 1 + randn(s["d_inner"], std=0.1),
                p + "mixer.out_proj.weight": randn(d, s["d_inner"], std=s["d_inner"] ** -0.5),
            }
        )
    sd["backbone.norm_f.weight"] = 1 + randn(d, std=0.1)
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]  # tied: torch.save stores one tensor under both keys
    return sd


def write_mamba_ssm_folder(folder, config, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    sd = random_mamba_ssm_weights(config, seed)
    torch.save(sd, folder / "pytorch_model.bin")
    return sd


def reference_logits(sd, config, ids):
    """Mamba-2 from its definition, in float64, with loops and einsum (no ma2mba code)."""
    s = sizes(config)
    h, p, g, n, k = s["nheads"], s["headdim"], s["ngroups"], s["d_state"], s["d_conv"]
    W = {key: v.double() for key, v in sd.items()}

    def rms(x, w, eps=1e-5):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def silu(x):
        return x * torch.sigmoid(x)

    b, l = ids.shape
    hidden = W["backbone.embedding.weight"][ids]  # (b, l, d)
    residual = torch.zeros_like(hidden)
    for i in range(config["n_layer"]):
        P = lambda name: W[f"backbone.layers.{i}.{name}"]
        residual = residual + hidden
        u = rms(residual, P("norm.weight"))
        zxbcdt = torch.einsum("bld,ed->ble", u, P("mixer.in_proj.weight"))
        z, xbc, dt = zxbcdt.split([s["d_inner"], s["conv_dim"], h], -1)
        conv_w = P("mixer.conv1d.weight")[:, 0]  # (conv_dim, k)
        padded = torch.cat([torch.zeros(b, k - 1, s["conv_dim"], dtype=xbc.dtype), xbc], 1)
        xbc = silu(sum(padded[:, j : j + l] * conv_w[:, j] for j in range(k)) + P("mixer.conv1d.bias"))
        x, B, C = xbc.split([s["d_inner"], g * n, g * n], -1)
        x = x.reshape(b, l, h, p)
        B = B.reshape(b, l, g, n).repeat_interleave(h // g, dim=2)  # (b, l, h, n)
        C = C.reshape(b, l, g, n).repeat_interleave(h // g, dim=2)
        dt = torch.log1p(torch.exp(dt + P("mixer.dt_bias")))  # softplus, (b, l, h)
        A = -torch.exp(P("mixer.A_log"))
        state = torch.zeros(b, h, p, n, dtype=torch.float64)
        ys = []
        for t in range(l):
            state = torch.exp(dt[:, t] * A)[..., None, None] * state + torch.einsum(
                "bh,bhp,bhn->bhpn", dt[:, t], x[:, t], B[:, t]
            )
            ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]) + P("mixer.D")[:, None] * x[:, t])
        y = torch.stack(ys, 1).reshape(b, l, s["d_inner"]) * silu(z)
        y = torch.cat(
            [rms(part, w) for part, w in zip(y.chunk(g, -1), P("mixer.norm.weight").chunk(g))], -1
        )  # per group
        hidden = torch.einsum("ble,de->bld", y, P("mixer.out_proj.weight"))
    final = rms(residual + hidden, W["backbone.norm_f.weight"])
    return torch.einsum("bld,vd->blv", final, W["lm_head.weight"])


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


IDS = torch.randint(0, 100, (2, 21), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("config", [MAMBA2_130M_STYLE, GROUPED], ids=["130m_style", "grouped"])
def test_mamba_ssm_checkpoint_matches_reference(tmp_path, config):
    sd = write_mamba_ssm_folder(tmp_path, config)
    want = reference_logits(sd, config, IDS)
    lm64 = Mamba2LM.from_pretrained(tmp_path, dtype=torch.float64)
    assert set(lm64.state_dict()) == set(sd)  # exactly mamba_ssm's key names
    assert rel_err(lm64(IDS).logits, want) <= 1e-10
    lm32 = Mamba2LM.from_pretrained(tmp_path)
    assert lm32.lm_head.weight is lm32.backbone.embedding.weight
    assert rel_err(lm32(IDS).logits, want) <= 1e-4


@pytest.mark.parametrize("config", [MAMBA2_130M_STYLE, GROUPED], ids=["130m_style", "grouped"])
def test_transformers_mamba2_gives_the_same_logits(tmp_path, config):
    transformers = pytest.importorskip("transformers")
    sd = write_mamba_ssm_folder(tmp_path, config)
    s = sizes(config)
    hf_config = transformers.Mamba2Config(
        vocab_size=s["vocab"],
        hidden_size=config["d_model"],
        num_hidden_layers=config["n_layer"],
        state_size=s["d_state"],
        expand=s["expand"],
        conv_kernel=s["d_conv"],
        head_dim=s["headdim"],
        num_heads=s["nheads"],
        n_groups=s["ngroups"],
        chunk_size=s.get("chunk_size", 256),
        use_bias=False,
        use_conv_bias=True,
        residual_in_fp32=True,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        time_step_limit=(0.0, float("inf")),
    )
    hf = transformers.Mamba2ForCausalLM(hf_config).eval()
    hf_sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}
    missing, unexpected = hf.load_state_dict(hf_sd, strict=False)
    assert not missing and not unexpected
    with torch.no_grad():
        theirs = hf(IDS).logits
    ours = Mamba2LM.from_pretrained(tmp_path)(IDS).logits
    assert rel_err(ours, theirs) <= 1e-4


def test_safetensors_folder_and_save_pretrained(tmp_path):
    sd = write_mamba_ssm_folder(tmp_path / "bin", MAMBA2_130M_STYLE)
    lm = Mamba2LM.from_pretrained(tmp_path / "bin")
    lm.save_pretrained(tmp_path / "st")
    assert (tmp_path / "st" / "model.safetensors").is_file() and not (tmp_path / "st" / "pytorch_model.bin").exists()
    again = Mamba2LM.from_pretrained(str(tmp_path / "st"))
    torch.testing.assert_close(again(IDS).logits, lm(IDS).logits, rtol=0, atol=0)
    assert rel_err(again(IDS).logits, reference_logits(sd, MAMBA2_130M_STYLE, IDS)) <= 1e-4


@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, with the Hub unreachable by configuration."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_repo_id_resolves_from_the_hub_cache(tmp_path, offline_hub_cache):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub_cache / "models--state-spaces--tiny-mamba2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    sd = write_mamba_ssm_folder(repo / "snapshots" / commit, MAMBA2_130M_STYLE)
    lm = Mamba2LM.from_pretrained("state-spaces/tiny-mamba2")
    assert rel_err(lm(IDS).logits, reference_logits(sd, MAMBA2_130M_STYLE, IDS)) <= 1e-4


def test_unknown_repo_offline_is_a_clear_error(offline_hub_cache):
    with pytest.raises(ModelNotFoundError, match="not in the local cache"):
        Mamba2LM.from_pretrained("state-spaces/no-such-model")


def test_folder_errors_are_clear(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MAMBA2_130M_STYLE))
    with pytest.raises(ModelNotFoundError, match="has no weights"):
        Mamba2LM.from_pretrained(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        Mamba2LM.from_pretrained(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="No model folder"):
        Mamba2LM.from_pretrained(tmp_path / "does" / "not" / "exist")
