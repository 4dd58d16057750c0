"""How fast is the pure-PyTorch Mamba-2 on this CPU, and against what?

Sections (run all, or some with --only):
  roofline  fp32 and bf16 matmul GFLOP/s at the shape of mamba2-130m's in_proj: the ceiling.
  scan      one layer's SSD scan at the mamba2-130m shape (24 heads × 64, state 128), side by side:
            ma2mba's chunked scan, a transcription of the paper's minimal SSD listing (einsum +
            segsum, below), transformers' Mamba2 torch scan, and the token-by-token recurrence
            (run on a short length and extrapolated per token).
  model     Mamba2LM tokens/s, forward and forward+backward, fp32 and bf16 autocast, at lengths
            1k/4k/16k: d_model 256 × 8 layers, and the mamba2-130m shape (d_model 768, headdim 64,
            state 128) run at 4 of its 24 layers (per-layer cost does not depend on depth; the
            24-layer tokens/s is about a sixth, slightly more since the LM head is counted once);
            % of the matmul roofline measured in turns with each row; decoding by `step`.
  hf        The same LMs in transformers' Mamba2ForCausalLM (its torch path), in turns with ours.
  ablation  What bought what: the 130m-shape model at 4k tokens (fp32), changes added one by one.
  memory    Peak forward tensor memory vs length (ma2mba.memory.peak_bytes), with and without logits.

The vocabulary is 1024 (not 50k): the LM head is not what is measured. Timings are medians of
--repeats runs after a warm-up, each implementation run in turns with the others.

Threads: this machine is shared by several jobs. With 2 threads every small op waits for a second
core that another job holds, and timings swing 3-10x; one thread (the default here) gives stable
per-core numbers, and the roofline is measured with the same thread count. On a quiet machine,
--threads 2 measures both cores.

    python benchmarks/ssd_speed.py                   # everything (~20 min on one busy core)
    python benchmarks/ssd_speed.py --only scan,hf    # some sections; results/ssd_speed.json is merged
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ma2mba import Mamba2Config, Mamba2LM
from ma2mba.engine.ssd import discretize_dt, ssd_naive, ssd_scan

ROOT = Path(__file__).resolve().parent.parent

VOCAB = 1024
CONFIGS = {"256x8": dict(d_model=256, n_layer=8), "130m_4_layers": dict(d_model=768, n_layer=4)}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def timed_rounds(fns: dict, repeats: int) -> dict:
    """Wall times of each function over `repeats` rounds, run in turns (a, b, c, a, b, c, …) after
    one warm-up each, so that a load spike on this shared machine hits all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_seconds(fns: dict, repeats: int) -> dict:
    """Median wall time of each function over rounds run in turns (timed_rounds)."""
    return {name: statistics.median(t) for name, t in timed_rounds(fns, repeats).items()}


def autocast(dtype_name):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=DTYPES[dtype_name] is not None)


# ---------------------------------------------------------------- roofline
def matmuls():
    """Functions running one (4096×768)·(768×3352) product, mamba2-130m's in_proj, in fp32 and bf16."""
    fns = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(4096, 768, dtype=dtype), torch.randn(768, 3352, dtype=dtype)
        fns[f"matmul_{name}"] = lambda a=a, b=b: a @ b
    return fns


def gflops(seconds: dict) -> dict:
    flops = 2 * 4096 * 768 * 3352
    return {f"{k}_gflops": flops / seconds[f"matmul_{k}"] / 1e9 for k in ("fp32", "bf16")}


def roofline(repeats=5):
    return gflops(median_seconds(matmuls(), repeats))


# ---------------------------------------------------------------- the paper's minimal SSD listing
def listing_segsum(a):
    """a (…, T) -> (…, T, T): out[i, j] = a[j+1] + … + a[i] below the diagonal, -inf above."""
    T = a.size(-1)
    a = a[..., None].expand(*a.shape, T)  # (…, T_i, T_j) holding a[i]
    a = a.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(-1), 0)
    out = a.cumsum(-2)
    return out.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(0), -torch.inf)


def listing_ssd(X, A, B, C, block_len=64, initial_states=None):
    """Our transcription of the minimal discrete SSD of Dao & Gu (2024), listing 1.

    X (b, l, h, p) already multiplied by dt, A (b, l, h) = dt·A, B and C (b, l, h, n) per head;
    l a multiple of block_len. Four einsums: intra-chunk, chunk states, inter-chunk, state to output.
    """
    b, l, h, p = X.shape
    c = l // block_len
    X, A, B, C = (t.reshape(b, c, block_len, *t.shape[2:]) for t in (X, A, B, C))
    A = A.permute(0, 3, 1, 2)  # (b, h, c, T)
    A_cum = A.cumsum(-1)
    L = torch.exp(listing_segsum(A))  # (b, h, c, T, T)
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X)
    decay_states = torch.exp(A_cum[..., -1:] - A_cum)  # (b, h, c, T)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)
    if initial_states is None:
        initial_states = torch.zeros_like(states[:, :1])
    states = torch.cat([initial_states, states], 1)
    decay_chunk = torch.exp(listing_segsum(F.pad(A_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final = states[:, :-1], states[:, -1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, torch.exp(A_cum))
    return (Y_diag + Y_off).reshape(b, l, h, p), final


# ---------------------------------------------------------------- scan
def scan_inputs(l, h=24, p=64, n=128, g=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(1, l, h, p, generator=gen),
        dt=torch.randn(1, l, h, generator=gen) - 2,
        A=-torch.exp(torch.rand(h, generator=gen) * math.log(16)),
        B=torch.randn(1, l, g, n, generator=gen),
        C=torch.randn(1, l, g, n, generator=gen),
        D=torch.ones(h),
        dt_bias=torch.zeros(h),
    )


def scan_impls():
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    def ours(x, dt, A, B, C, D, dt_bias):
        return ssd_scan(x, dt, A, B, C, 64, D=D, dt_bias=dt_bias)

    def listing(x, dt, A, B, C, D, dt_bias):
        dt = discretize_dt(dt, dt_bias)
        h, g = x.shape[2], B.shape[2]
        Bh, Ch = (t.repeat_interleave(h // g, dim=2) for t in (B, C))
        y, final = listing_ssd(x * dt[..., None].to(x.dtype), dt * A, Bh, Ch)
        return y + x * D[:, None], final

    def transformers_torch(x, dt, A, B, C, D, dt_bias):
        return mamba2_chunk_scan(x, dt, A, B, C, 256, D=D, dt_bias=dt_bias, dt_softplus=True, return_final_states=True)

    def naive(x, dt, A, B, C, D, dt_bias):
        return ssd_naive(x, dt, A, B, C, D=D, dt_bias=dt_bias)

    return {
        "ma2mba": ours,
        "paper_listing": listing,
        "transformers_torch": transformers_torch,
        "naive_recurrence": naive,
    }


def scan_section(length, repeats, naive_length=256):
    rows = []
    for dtype_name in DTYPES:
        fns = {}
        for name, fn in scan_impls().items():
            l = naive_length if name == "naive_recurrence" else length
            for kind, backward in (("fwd", False), ("fwd_bwd", True)):
                base = scan_inputs(l)
                fns[name, kind, l] = lambda fn=fn, base=base, backward=backward: run_scan(
                    fn, base, dtype_name, backward
                )
        seconds = median_seconds(fns, repeats)
        for name in scan_impls():
            l = naive_length if name == "naive_recurrence" else length
            row = dict(
                impl=name,
                dtype=dtype_name,
                length=l,
                extrapolated=(l != length),
                **{f"{kind}_us_per_token": seconds[name, kind, l] / l * 1e6 for kind in ("fwd", "fwd_bwd")},
            )
            rows.append(row)
            print(
                f"  scan {name:20s} {dtype_name} L={l:5d}  fwd {row['fwd_us_per_token']:8.2f} us/tok"
                f"  fwd+bwd {row['fwd_bwd_us_per_token']:8.2f} us/tok",
                flush=True,
            )
    return rows


def run_scan(fn, base, dtype_name, backward):
    inputs = {k: v.clone().requires_grad_(backward) for k, v in base.items()}
    if dtype_name == "bf16":  # as inside the model under autocast: x, B, C, dt arrive in bf16
        inputs.update({k: inputs[k].bfloat16() for k in ("x", "dt", "B", "C")})
    with autocast(dtype_name), torch.set_grad_enabled(backward):
        y, final = fn(**inputs)
        if backward:
            (y.float().sum() + final.float().sum()).backward()


# ---------------------------------------------------------------- model
def matmul_flops_per_token(config: Mamba2Config) -> int:
    """Forward matmul FLOPs per token from the weights (in_proj, out_proj, MLP, LM head); the SSD's
    own products depend on the chunk size and are not counted. fwd+bwd counts 3×."""
    s = config.ssm
    per_layer = config.d_model * s.d_in_proj + s.d_inner * config.d_model
    if config.d_intermediate:
        per_layer += 3 * config.d_model * config.d_intermediate
    return 2 * (config.n_layer * per_layer + config.d_model * config.padded_vocab_size)


def build_lm(name, n_layer=None, keep_activations=False):
    """keep_activations: mamba_ssm's use_mem_eff_path=False (no recomputation in backward)."""
    torch.manual_seed(0)
    cfg = dict(CONFIGS[name])
    if n_layer:
        cfg["n_layer"] = n_layer
    ssm_cfg = dict(use_mem_eff_path=False) if keep_activations else {}
    return Mamba2LM(Mamba2Config(vocab_size=VOCAB, ssm_cfg=ssm_cfg, **cfg))


def lm_runner(forward, ids, dtype_name, backward):
    def run():
        with autocast(dtype_name), torch.set_grad_enabled(backward):
            logits = forward(ids)
        if backward:
            logits.float().mean().backward()

    return run


def model_section(lengths, repeats):
    rows = []
    for name in CONFIGS:
        lm = build_lm(name)
        flops = matmul_flops_per_token(lm.config)
        for dtype_name in DTYPES:
            for length in lengths:
                ids = torch.randint(0, VOCAB, (1, length))
                row = dict(config=name, dtype=dtype_name, length=length, matmul_flops_per_token=flops)
                fns = dict(
                    matmuls(),
                    fwd=lm_runner(lambda x: lm(x).logits, ids, dtype_name, False),
                    fwd_bwd=lm_runner(lambda x: lm(x).logits, ids, dtype_name, True),
                )
                seconds = median_seconds(fns, repeats if length < 16384 else 1)
                row.update(gflops(seconds))
                for kind, passes in (("fwd", 1), ("fwd_bwd", 3)):
                    row[f"{kind}_tok_s"] = length / seconds[kind]
                    achieved = passes * flops * length / seconds[kind] / 1e9
                    row[f"{kind}_pct_fp32_roofline"] = 100 * achieved / row["fp32_gflops"]
                    row[f"{kind}_pct_bf16_roofline"] = 100 * achieved / row["bf16_gflops"]
                rows.append(row)
                print(
                    f"  model {name:6s} {dtype_name} L={length:6d}  "
                    + "  ".join(f"{k} {v:.1f}" for k, v in row.items() if k.endswith(("tok_s", "roofline", "gflops"))),
                    flush=True,
                )
            # Decoding: the recurrence one token at a time (what a chat answer runs).
            state, ids = lm.empty_state(1), torch.randint(0, VOCAB, (64,))

            def decode():
                s = state
                with autocast(dtype_name), torch.no_grad():
                    for t in range(len(ids)):
                        s = lm.step(ids[t : t + 1], s).state

            tok_s = len(ids) / median_seconds({"step": decode}, repeats)["step"]
            rows.append(dict(config=name, dtype=dtype_name, length=len(ids), mode="step", fwd_tok_s=tok_s))
            print(f"  model {name:6s} {dtype_name} step (token by token): {tok_s:.1f} tok/s", flush=True)
    return rows


def hf_lm(ours: Mamba2LM):
    """transformers' Mamba2ForCausalLM with our weights (torch path on CPU)."""
    import transformers

    c, s = ours.config, ours.config.ssm
    hf = transformers.Mamba2ForCausalLM(
        transformers.Mamba2Config(
            vocab_size=c.padded_vocab_size,
            hidden_size=c.d_model,
            num_hidden_layers=c.n_layer,
            state_size=s.d_state,
            expand=s.expand,
            conv_kernel=s.d_conv,
            head_dim=s.headdim,
            num_heads=s.nheads,
            n_groups=s.ngroups,
            chunk_size=s.chunk_size,
            use_bias=False,
            use_conv_bias=True,
            residual_in_fp32=True,
            tie_word_embeddings=True,
        )
    )
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in ours.state_dict().items()}
    hf.load_state_dict(sd)
    return hf


def hf_section(lengths, repeats):
    """Speed-ups are medians of per-round ratios: each round times ours and theirs back to back, so
    the ratio cancels the load of that moment (transformers' times swing ±10% here between runs).

    Ours runs twice for fwd+bwd: as built (use_mem_eff_path=True: the mixer recomputes its conv, scan
    and norm in backward, like mamba_ssm's fused kernel) and with use_mem_eff_path=False, which keeps
    every activation as transformers' torch path does. The peak tensor memory of one fwd+bwd of each
    is measured after the timings."""
    from ma2mba.memory import peak_bytes

    rows = []
    for name in CONFIGS:
        ours, keep = build_lm(name), build_lm(name, keep_activations=True)
        theirs = hf_lm(ours)
        for dtype_name in DTYPES:
            for length in lengths:
                ids = torch.randint(0, VOCAB, (1, length))
                row = dict(config=name, dtype=dtype_name, length=length, rounds=repeats)
                for kind, backward in (("fwd", False), ("fwd_bwd", True)):
                    theirs.train(backward)
                    runners = {"ma2mba": lm_runner(lambda x: ours(x).logits, ids, dtype_name, backward)}
                    if backward:  # without backward the two builds of ours run the same code
                        runners["ma2mba_keep"] = lm_runner(lambda x: keep(x).logits, ids, dtype_name, backward)
                    runners["transformers"] = lm_runner(
                        lambda x: theirs(x, use_cache=False).logits, ids, dtype_name, backward
                    )
                    times = timed_rounds(runners, repeats)
                    row[f"{kind}_tok_s_transformers"] = length / statistics.median(times["transformers"])
                    for ours_name in runners.keys() - {"transformers"}:
                        ratios = [t / o for o, t in zip(times[ours_name], times["transformers"])]
                        suffix = ours_name.removeprefix("ma2mba")  # "" or "_keep"
                        row.update(
                            {
                                f"{kind}_tok_s_ma2mba{suffix}": length / statistics.median(times[ours_name]),
                                f"{kind}_speedup{suffix}": statistics.median(ratios),
                                f"{kind}_speedup{suffix}_range": [min(ratios), max(ratios)],
                            }
                        )
                    if backward:
                        for ours_name, run in runners.items():
                            row[f"fwd_bwd_peak_bytes_{ours_name}"] = peak_bytes(run)
                rows.append(row)
                print(
                    f"  hf {name:14s} {dtype_name} L={length:5d}  fwd speedup {row['fwd_speedup']:.2f}x"
                    f" ({row['fwd_speedup_range'][0]:.2f}-{row['fwd_speedup_range'][1]:.2f})"
                    f"  fwd+bwd speedup {row['fwd_bwd_speedup']:.2f}x"
                    f" ({row['fwd_bwd_speedup_range'][0]:.2f}-{row['fwd_bwd_speedup_range'][1]:.2f}),"
                    f" keeping activations {row['fwd_bwd_speedup_keep']:.2f}x"
                    f" ({row['fwd_bwd_speedup_keep_range'][0]:.2f}-{row['fwd_bwd_speedup_keep_range'][1]:.2f})",
                    flush=True,
                )
    return rows


# ---------------------------------------------------------------- ablation
def torch_conv1d(x, weight, bias, conv_state, silu=False):
    """The depthwise conv as torch's grouped conv1d (what ma2mba replaced), then SiLU: x (b, l, dim)."""
    w = weight.shape[-1]
    xs = torch.cat([conv_state.to(x.dtype), x.transpose(1, 2)], dim=-1)  # (b, dim, w - 1 + l)
    y = F.conv1d(xs, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), groups=x.shape[-1])
    y = F.silu(y) if silu else y
    return y.transpose(1, 2), xs[..., xs.shape[-1] - (w - 1) :].clone()


def listing_scan(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=True,
    dt_limit=(0.0, math.inf),
    initial_state=None,
):
    """ssd_scan's signature on top of the paper's listing, differentiated by autograd (block 256)."""
    b, l, h, p = x.shape
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)
    Bh, Ch = (t.repeat_interleave(h // B.shape[2], dim=2) for t in (B, C))
    T = min(256, l)
    pad = (-l) % T
    X, dA, Bh, Ch = (
        F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x * dt[..., None].to(x.dtype), dt * A, Bh, Ch)
    )
    y, final = listing_ssd(
        X, dA, Bh, Ch, block_len=T, initial_states=None if initial_state is None else initial_state[:, None]
    )
    y = y[:, :l].to(x.dtype) + x * D[:, None].to(x.dtype)
    return y, final


def no_checkpoint(fn, *args, **kwargs):
    return fn(*args)


def ablation_steps(lm):
    """Cumulative: each step adds one change to the one before; the last is ma2mba as it is."""
    from ma2mba.engine import mamba2, ssd

    whole = {
        (lm.backbone, "segment_tokens"): 1 << 40,  # one segment however long the input
        (mamba2, "CACHE_BLOCK_ELEMENTS"): 1 << 40,
    }  # conv and gated norm over whole tensors
    steps = [
        (
            "paper listing scan, autograd backward (T=256)",
            {
                (mamba2, "ssd_scan"): listing_scan,
                (ssd, "CPU_MAX_CHUNK"): 256,
                (mamba2, "causal_conv1d"): torch_conv1d,
                (mamba2, "checkpoint"): no_checkpoint,
            },
        ),
        (
            "+ ChunkedScan: hand-written backward (T=256)",
            {
                (ssd, "CPU_MAX_CHUNK"): 256,
                (mamba2, "causal_conv1d"): torch_conv1d,
                (mamba2, "checkpoint"): no_checkpoint,
            },
        ),
        ("+ chunks of 64 on CPU", {(mamba2, "causal_conv1d"): torch_conv1d, (mamba2, "checkpoint"): no_checkpoint}),
        ("+ causal conv as taps with its own backward", {(mamba2, "checkpoint"): no_checkpoint}),
        ("+ recompute the mixer interior in backward", {}),
    ]
    return [(label, {**whole, **patches}) for label, patches in steps] + [
        ("+ segments of 2048 positions", {(mamba2, "CACHE_BLOCK_ELEMENTS"): 1 << 40}),
        ("+ conv (with its SiLU) and gated norm in cache-sized blocks (= ma2mba)", {}),
    ]


def patched(patches):
    """Set attributes for the duration of a call: patched({(obj, name): value, ...})(fn)()."""

    def wrap(fn):
        def run():
            originals = {key: getattr(*key) for key in patches}
            for (obj, name), value in patches.items():
                setattr(obj, name, value)
            try:
                return fn()
            finally:
                for (obj, name), value in originals.items():
                    setattr(obj, name, value)

        return run

    return wrap


def saved_bytes_per_token(lm, ids):
    """Bytes that autograd keeps for backward (parameters excluded), per token."""
    params = {p.untyped_storage().data_ptr() for p in lm.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lm(ids)
    return sum(seen.values()) / ids.shape[1]


def ablation_section(length, repeats, long_length=16384):
    lm = build_lm("130m_4_layers")
    ids = torch.randint(0, VOCAB, (1, length))
    rows = []
    for label, patches in ablation_steps(lm):
        seconds = median_seconds(
            {
                kind: patched(patches)(lm_runner(lambda x: lm(x).logits, ids, "fp32", backward))
                for kind, backward in (("fwd", False), ("fwd_bwd", True))
            },
            repeats,
        )
        saved = patched(patches)(lambda: saved_bytes_per_token(lm, ids))() / lm.config.n_layer
        rows.append(
            dict(
                step=label,
                length=length,
                fwd_tok_s=length / seconds["fwd"],
                fwd_bwd_tok_s=length / seconds["fwd_bwd"],
                saved_bytes_per_token_per_layer=saved,
            )
        )
        print(
            f"  ablation {label:55s} fwd {rows[-1]['fwd_tok_s']:7.1f} tok/s  fwd+bwd {rows[-1]['fwd_bwd_tok_s']:7.1f} tok/s"
            f"  kept for backward {saved / 1024:5.1f} KiB/token/layer",
            flush=True,
        )
    # Segments matter most for long inputs: one 16k-token segment against segments of 2048, in turns.
    ids = torch.randint(0, VOCAB, (1, long_length))
    one_segment = patched({(lm.backbone, "segment_tokens"): 1 << 40})
    for dtype_name, backward in (("bf16", False), ("fp32", True)):
        run = lm_runner(lambda x: lm(x).logits, ids, dtype_name, backward)
        seconds = median_seconds({"one": one_segment(run), "segments": run}, max(1, repeats - 1))
        rows.append(
            dict(
                step=f"segments of 2048 at {long_length} tokens, {dtype_name} {'fwd+bwd' if backward else 'fwd'}",
                length=long_length,
                one_segment_tok_s=long_length / seconds["one"],
                segments_tok_s=long_length / seconds["segments"],
            )
        )
        print(
            f"  ablation {rows[-1]['step']}: one segment {rows[-1]['one_segment_tok_s']:.0f} tok/s,"
            f" segments {rows[-1]['segments_tok_s']:.0f} tok/s",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------- memory
def memory_section(lengths):
    """Peak tensor bytes of one no-grad forward (ma2mba.memory's meter), with and without the LM head.

    The backbone's transients stay small (it runs in segments of 2048 positions); what grows with
    the length is the output: the last hidden states, and the logits if they are asked for.
    """
    from ma2mba.memory import peak_bytes

    lm = build_lm("130m_4_layers")
    rows = []
    for length in lengths:
        ids = torch.randint(0, VOCAB, (1, length))
        with torch.no_grad():
            with_logits = peak_bytes(lambda: lm(ids))
            hidden_only = peak_bytes(lambda: lm(ids, return_logits=False))
        rows.append(
            dict(
                config="130m_4_layers",
                length=length,
                fwd_peak_bytes=with_logits,
                bytes_per_token=with_logits / length,
                fwd_peak_bytes_no_logits=hidden_only,
            )
        )
        print(
            f"  memory 130m_4_layers L={length:6d}  forward peak {with_logits / 2**20:8.1f} MiB"
            f" ({with_logits / length / 1024:5.1f} KiB/token), without logits {hidden_only / 2**20:8.1f} MiB",
            flush=True,
        )
    return rows


def transformers_version():
    try:
        import transformers

        return transformers.__version__
    except ImportError:
        return None


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def markdown(results) -> str:
    """The tables of benchmarks/ssd_speed.md, from the JSON."""
    out = []

    def table(header, rows):
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out.extend("| " + " | ".join(str(v) for v in row) + " |" for row in rows)
        out.append("")

    m = results.get("machine", {})
    out.append(
        f"Measured on {m.get('cpu')} ({m.get('cores')} cores), {m.get('threads')} thread(s), torch {m.get('torch')}, "
        f"load average {', '.join(f'{v:.1f}' for v in m.get('load_average', []))}.\n"
    )
    if "roofline" in results:
        r = results["roofline"]
        out.append(
            f"Matmul roofline (4096×768 · 768×3352): fp32 {r['fp32_gflops']:.0f} GFLOP/s, bf16 {r['bf16_gflops']:.0f} GFLOP/s.\n"
        )
    if "model" in results:
        rows = [r for r in results["model"] if r.get("mode") != "step"]
        table(
            [
                "config",
                "dtype",
                "tokens",
                "fwd tok/s",
                "fwd+bwd tok/s",
                "fwd % fp32 roof",
                "fwd+bwd % fp32 roof",
                "fwd+bwd % bf16 roof",
                "roofline fp32/bf16 GFLOP/s",
            ],
            [
                (
                    r["config"],
                    r["dtype"],
                    r["length"],
                    f"{r['fwd_tok_s']:.0f}",
                    f"{r['fwd_bwd_tok_s']:.0f}",
                    f"{r['fwd_pct_fp32_roofline']:.0f}%",
                    f"{r['fwd_bwd_pct_fp32_roofline']:.0f}%",
                    f"{r['fwd_bwd_pct_bf16_roofline']:.0f}%",
                    f"{r['fp32_gflops']:.0f} / {r['bf16_gflops']:.0f}",
                )
                for r in rows
            ],
        )
        steps = [r for r in results["model"] if r.get("mode") == "step"]
        table(
            ["config", "dtype", "decoding with `step`, tok/s"],
            [(r["config"], r["dtype"], f"{r['fwd_tok_s']:.1f}") for r in steps],
        )
    if "hf" in results:

        def span(r, speedup):  # the per-round range, where the run recorded it
            lo_hi = r.get(f"{speedup}_range")
            return f" ({lo_hi[0]:.2f}–{lo_hi[1]:.2f})" if lo_hi else ""

        out.append(
            f"transformers {m.get('transformers')}; speed-up = median over {results['hf'][0].get('rounds', 3)} rounds "
            "of theirs/ours timed back to back (min–max in brackets).\n"
        )
        table(
            [
                "config",
                "dtype",
                "tokens",
                "fwd tok/s ma2mba",
                "fwd tok/s transformers",
                "fwd speed-up",
                "fwd+bwd tok/s ma2mba",
                "fwd+bwd tok/s transformers",
                "fwd+bwd speed-up",
            ],
            [
                (
                    r["config"],
                    r["dtype"],
                    r["length"],
                    f"{r['fwd_tok_s_ma2mba']:.0f}",
                    f"{r['fwd_tok_s_transformers']:.0f}",
                    f"**{r['fwd_speedup']:.2f}×**" + span(r, "fwd_speedup"),
                    f"{r['fwd_bwd_tok_s_ma2mba']:.0f}",
                    f"{r['fwd_bwd_tok_s_transformers']:.0f}",
                    f"**{r['fwd_bwd_speedup']:.2f}×**" + span(r, "fwd_bwd_speedup"),
                )
                for r in results["hf"]
            ],
        )
        kept = [r for r in results["hf"] if "fwd_bwd_speedup_keep" in r]
        if kept:
            mib = lambda r, who: f"{r[f'fwd_bwd_peak_bytes_{who}'] / 2**20:.0f}"
            out.append(
                "fwd+bwd with `use_mem_eff_path=False` (no recomputation in backward, as transformers' torch "
                "path), and the peak tensor memory of one fwd+bwd:\n"
            )
            table(
                [
                    "config",
                    "dtype",
                    "tokens",
                    "fwd+bwd tok/s, keeping activations",
                    "speed-up over transformers",
                    "peak MiB: ma2mba (default)",
                    "ma2mba, keeping activations",
                    "transformers",
                ],
                [
                    (
                        r["config"],
                        r["dtype"],
                        r["length"],
                        f"{r['fwd_bwd_tok_s_ma2mba_keep']:.0f}",
                        f"**{r['fwd_bwd_speedup_keep']:.2f}×**" + span(r, "fwd_bwd_speedup_keep"),
                        mib(r, "ma2mba"),
                        mib(r, "ma2mba_keep"),
                        mib(r, "transformers"),
                    )
                    for r in kept
                ],
            )
    if "scan" in results:
        table(
            [
                "scan (one 130m layer: 24 heads × 64, state 128)",
                "dtype",
                "tokens run",
                "fwd µs/token",
                "fwd+bwd µs/token",
            ],
            [
                (
                    r["impl"] + (" (extrapolated)" if r["extrapolated"] else ""),
                    r["dtype"],
                    r["length"],
                    f"{r['fwd_us_per_token']:.1f}",
                    f"{r['fwd_bwd_us_per_token']:.1f}",
                )
                for r in results["scan"]
            ],
        )
    if "ablation" in results:
        steps = [r for r in results["ablation"] if "fwd_tok_s" in r]
        table(
            [
                "130m shape, 4 layers, 4096 tokens, fp32",
                "fwd tok/s",
                "fwd+bwd tok/s",
                "kept for backward, KiB/token/layer",
            ],
            [
                (
                    r["step"],
                    f"{r['fwd_tok_s']:.0f}",
                    f"{r['fwd_bwd_tok_s']:.0f}",
                    f"{r['saved_bytes_per_token_per_layer'] / 1024:.1f}",
                )
                for r in steps
            ],
        )
        long = [r for r in results["ablation"] if "segments_tok_s" in r]
        table(
            ["130m shape, 4 layers", "one segment, tok/s", "segments of 2048, tok/s"],
            [(r["step"], f"{r['one_segment_tok_s']:.0f}", f"{r['segments_tok_s']:.0f}") for r in long],
        )
    if "memory" in results:
        rows, previous = [], None
        for r in results["memory"]:
            slope = (
                ""
                if previous is None
                else f"{(r['fwd_peak_bytes'] - previous['fwd_peak_bytes']) / (r['length'] - previous['length']) / 1024:.1f}"
            )
            rows.append(
                (r["length"], f"{r['fwd_peak_bytes'] / 2**20:.0f}", f"{r['bytes_per_token'] / 1024:.1f}", slope)
            )
            previous = r
        table(
            ["130m shape, 4 layers: tokens", "forward peak MiB (with logits)", "KiB per token", "KiB per added token"],
            rows,
        )
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="roofline,scan,model,hf,ablation,memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-repeats", type=int, default=7, help="rounds for the transformers comparison")
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (see above)")
    parser.add_argument("--out", default=str(ROOT / "results" / "ssd_speed.json"))
    parser.add_argument("--markdown", action="store_true", help="print the tables of --out as markdown and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    torch.set_num_threads(args.threads)
    lengths = [int(v) for v in args.lengths.split(",")]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = dict(
        cpu=cpu_name(),
        cores=os.cpu_count(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers_version(),
        load_average=os.getloadavg(),
    )
    sections = args.only.split(",")
    if "roofline" in sections:
        results["roofline"] = roofline()
        print("roofline", results["roofline"], flush=True)
    if "scan" in sections:
        results["scan"] = scan_section(4096, args.repeats)
    if "model" in sections:
        results["model"] = model_section(lengths, args.repeats)
    if "hf" in sections:
        results["hf"] = hf_section([4096], args.hf_repeats)
    if "ablation" in sections:
        results["ablation"] = ablation_section(4096, args.repeats)
    if "memory" in sections:
        results["memory"] = memory_section([1024, 4096, 16384, 32768])
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
