"""How fast is the pure-PyTorch Mamba-2 on this CPU, and against what?

Sections (run all, or some with --only):
  roofline  fp32 and bf16 matmul GFLOP/s at the shape of mamba2-130m's in_proj: the ceiling.
  scan      one layer's SSD scan at the mamba2-130m shape (24 heads × 64, state 128), side by side:
            ma2mba's chunked scan, a transcription of the paper's minimal SSD listing (einsum +
            segsum, below), transformers' Mamba2 torch scan, and the token-by-token recurrence
            (run on a short length and extrapolated per token).
  model     Mamba2LM tokens/s, forward and forward+backward, fp32 and bf16 autocast, at lengths
            1k/4k/16k, for d_model 256 × 8 layers and the mamba2-130m shape (768 × 24 layers),
            with % of the matmul roofline measured right before each row; and decoding by `step`.
  hf        The same LM in transformers' Mamba2ForCausalLM (torch path) next to ours, same run.
  memory    Peak forward memory vs length (fresh process per length: peak RSS minus RSS before).

The vocabulary is 1024 (not 50k): the LM head is not what is measured. Timings are medians over
--repeats runs after a warm-up; on a shared machine compare ratios taken in the same run.

    python benchmarks/ssd_speed.py                   # everything (~15-30 min on 2 busy cores)
    python benchmarks/ssd_speed.py --only scan,hf    # some sections; results/ssd_speed.json is merged
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ma2mba import Mamba2Config, Mamba2LM  # noqa: E402
from ma2mba.ssd import discretize_dt, ssd_naive, ssd_scan  # noqa: E402

VOCAB = 1024
CONFIGS = {"256x8": dict(d_model=256, n_layer=8), "130m": dict(d_model=768, n_layer=24)}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def median_seconds(fns: dict, repeats: int) -> dict:
    """Median wall time of each function, run in turns (a, b, c, a, b, c, …) after one warm-up each,
    so that a load spike on this shared machine hits all of them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
        x=torch.randn(1, l, h, p, generator=gen), dt=torch.randn(1, l, h, generator=gen) - 2,
        A=-torch.exp(torch.rand(h, generator=gen) * math.log(16)), B=torch.randn(1, l, g, n, generator=gen),
        C=torch.randn(1, l, g, n, generator=gen), D=torch.ones(h), dt_bias=torch.zeros(h),
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

    return {"ma2mba": ours, "paper_listing": listing, "transformers_torch": transformers_torch, "naive_recurrence": naive}


def scan_section(length, repeats, naive_length=256):
    rows = []
    for dtype_name in DTYPES:
        fns = {}
        for name, fn in scan_impls().items():
            l = naive_length if name == "naive_recurrence" else length
            for kind, backward in (("fwd", False), ("fwd_bwd", True)):
                fns[name, kind, l] = lambda fn=fn, base=scan_inputs(l), backward=backward: run_scan(fn, base, dtype_name, backward)
        seconds = median_seconds(fns, repeats)
        for name in scan_impls():
            l = naive_length if name == "naive_recurrence" else length
            row = dict(impl=name, dtype=dtype_name, length=l, extrapolated=(l != length),
                       **{f"{kind}_us_per_token": seconds[name, kind, l] / l * 1e6 for kind in ("fwd", "fwd_bwd")})
            rows.append(row)
            print(f"  scan {name:20s} {dtype_name} L={l:5d}  fwd {row['fwd_us_per_token']:8.2f} us/tok"
                  f"  fwd+bwd {row['fwd_bwd_us_per_token']:8.2f} us/tok", flush=True)
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


def build_lm(name, n_layer=None):
    torch.manual_seed(0)
    cfg = dict(CONFIGS[name])
    if n_layer:
        cfg["n_layer"] = n_layer
    return Mamba2LM(Mamba2Config(vocab_size=VOCAB, **cfg))


def lm_runner(forward, ids, dtype_name, backward):
    def run():
        with autocast(dtype_name), torch.set_grad_enabled(backward):
            logits = forward(ids)
        if backward:
            logits.float().mean().backward()

    return run


def training_bytes_estimate(config: Mamba2Config, length: int) -> int:
    """What fwd+bwd keeps per token and layer (fp32): residual + in_proj input (2·d_model),
    in_proj output (d_in_proj), out_proj input (d_inner)."""
    s = config.ssm
    return 4 * length * config.n_layer * (2 * config.d_model + s.d_in_proj + s.d_inner)


def model_section(lengths, repeats, max_training_bytes):
    rows = []
    for name in CONFIGS:
        lm = build_lm(name)
        flops = matmul_flops_per_token(lm.config)
        for dtype_name in DTYPES:
            for length in lengths:
                ids = torch.randint(0, VOCAB, (1, length))
                row = dict(config=name, dtype=dtype_name, length=length, matmul_flops_per_token=flops)
                fwd_bwd_model = lm
                if training_bytes_estimate(lm.config, length) > max_training_bytes:
                    # Too big for this shared machine: run 4 of the layers and scale to all of them.
                    fwd_bwd_model = build_lm(name, 4)
                    row["fwd_bwd_layers_run"] = 4
                fns = dict(matmuls(), fwd=lm_runner(lambda x: lm(x).logits, ids, dtype_name, False),
                           fwd_bwd=lm_runner(lambda x: fwd_bwd_model(x).logits, ids, dtype_name, True))
                seconds = median_seconds(fns, repeats if length < 16384 else 1)
                seconds["fwd_bwd"] *= lm.config.n_layer / fwd_bwd_model.config.n_layer
                row.update(gflops(seconds))
                for kind, passes in (("fwd", 1), ("fwd_bwd", 3)):
                    row[f"{kind}_tok_s"] = length / seconds[kind]
                    achieved = passes * flops * length / seconds[kind] / 1e9
                    row[f"{kind}_pct_fp32_roofline"] = 100 * achieved / row["fp32_gflops"]
                    row[f"{kind}_pct_bf16_roofline"] = 100 * achieved / row["bf16_gflops"]
                rows.append(row)
                print(f"  model {name:6s} {dtype_name} L={length:6d}  " + "  ".join(
                    f"{k} {v:.1f}" for k, v in row.items() if k.endswith(("tok_s", "roofline", "gflops", "run"))), flush=True)
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
    hf = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
        vocab_size=c.padded_vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layer, state_size=s.d_state,
        expand=s.expand, conv_kernel=s.d_conv, head_dim=s.headdim, num_heads=s.nheads, n_groups=s.ngroups,
        chunk_size=s.chunk_size, use_bias=False, use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=True,
    ))
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in ours.state_dict().items()}
    hf.load_state_dict(sd)
    return hf


def hf_section(lengths, repeats):
    """130m is run at 4 of its 24 layers: transformers keeps the (T, T) chunk matrices of every layer
    for backward (~0.6 GB per layer at 4k tokens), more than this shared machine has."""
    rows = []
    for name, n_layer in (("256x8", None), ("130m", 4)):
        ours = build_lm(name, n_layer)
        theirs = hf_lm(ours)
        for dtype_name in DTYPES:
            for length in lengths:
                ids = torch.randint(0, VOCAB, (1, length))
                row = dict(config=name, n_layer=ours.config.n_layer, dtype=dtype_name, length=length)
                for kind, backward in (("fwd", False), ("fwd_bwd", True)):
                    theirs.train(backward)
                    seconds = median_seconds({
                        "ma2mba": lm_runner(lambda x: ours(x).logits, ids, dtype_name, backward),
                        "transformers": lm_runner(lambda x: theirs(x, use_cache=False).logits, ids, dtype_name, backward),
                    }, repeats)
                    row.update({f"{kind}_tok_s_ma2mba": length / seconds["ma2mba"],
                                f"{kind}_tok_s_transformers": length / seconds["transformers"],
                                f"{kind}_speedup": seconds["transformers"] / seconds["ma2mba"]})
                rows.append(row)
                print(f"  hf {name:6s}x{ours.config.n_layer} {dtype_name} L={length:5d}  fwd speedup {row['fwd_speedup']:.2f}x"
                      f"  fwd+bwd speedup {row['fwd_bwd_speedup']:.2f}x", flush=True)
    return rows


# ---------------------------------------------------------------- memory
MEASURE_FORWARD_PEAK = """
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
from benchmarks.ssd_speed import build_lm
lm = build_lm(sys.argv[2])
ids = torch.randint(0, 1024, (1, int(sys.argv[3])))
rss_peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.no_grad():
    lm(ids[:, :64])  # settle lazy allocations
    before = rss_peak()
    lm(ids)
print(rss_peak() - before)
"""


def forward_peak_bytes(name, length):
    """One no-grad forward in a fresh process: peak RSS minus the peak before it."""
    out = subprocess.run([sys.executable, "-c", MEASURE_FORWARD_PEAK, str(ROOT), name, str(length)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def memory_section(lengths):
    rows = []
    for length in lengths:
        peak = forward_peak_bytes("130m", length)
        rows.append(dict(config="130m", length=length, fwd_peak_bytes=peak, bytes_per_token=peak / length))
        print(f"  memory 130m L={length:6d}  forward peak {peak / 2**20:8.1f} MiB  {peak / length / 1024:6.1f} KiB/token", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="roofline,scan,model,hf,memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's choice)")
    parser.add_argument("--out", default=str(ROOT / "results" / "ssd_speed.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(v) for v in args.lengths.split(",")]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = dict(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                              torch=torch.__version__, load_average=os.getloadavg())
    sections = args.only.split(",")
    if "roofline" in sections:
        results["roofline"] = roofline()
        print("roofline", results["roofline"], flush=True)
    if "scan" in sections:
        results["scan"] = scan_section(4096, args.repeats)
    if "model" in sections:
        results["model"] = model_section(lengths, args.repeats, max_training_bytes=4 * 2**30)
    if "hf" in sections:
        results["hf"] = hf_section([l for l in lengths if l <= 4096], args.repeats)
    if "memory" in sections:
        results["memory"] = memory_section([1024, 2048, 4096, 8192, 16384])
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
