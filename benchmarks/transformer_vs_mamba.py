"""The Transformer baseline against Mamba-2 at the packaged model's size (issue 5).

Sections (run all, or some with --only; results/transformer_vs_mamba.json is merged, not replaced):
  training   One forward + backward of the LM alone, batch 1, fp32, on inputs_embeds of length
             2^8 … 2^14, the loss on the last position only (the paper's Table 3 setup). Peak tensor
             bytes above the weights and their gradients (ma2mba.memory.peak_bytes) and seconds per
             token (medians, variants timed in turns at each length so load spikes hit all alike):
               transformer         SDPA as the model runs it (PyTorch's CPU flash kernel: no L×L matrix)
               transformer_matrix  the same with SDPA's math backend, which materialises the attention
                                   matrix (what a plain attention implementation keeps for backward)
               mamba2              no checkpointing
               mamba2_magc         Multi-Axis Gradient Checkpointing, grid from the planner
  inference  Streaming frames (2 tokens each at 1 FPS): bytes of the recurrent state vs the KV cache
             after 1 min … 2 h of video, and milliseconds to ingest one more frame at that point.
  accuracy   `ma2mba.training.evaluate` on held-out videos for the models that `python -m ma2mba train
             --recipe shapes_small [--lm transformer]` wrote (the two --runs may also be measured by two
             processes at once, one run each: each adds its model's entry to the JSON).

    python benchmarks/transformer_vs_mamba.py --only training,inference
    python benchmarks/transformer_vs_mamba.py --only accuracy --runs runs/tvm_mamba2 runs/tvm_transformer
    python benchmarks/transformer_vs_mamba.py --report-only     # table and figure from the JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ma2mba import Mamba2LM
from ma2mba.engine.lm import count_parameters
from ma2mba.engine.transformer import TransformerLM, matched_transformer_config
from ma2mba.memory import peak_bytes
from ma2mba.packaged.recipe import packaged_config

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "results" / "transformer_vs_mamba.json"
FIGURE = ROOT / "assets" / "transformer_vs_mamba.png"
VARIANTS = ("transformer", "transformer_matrix", "mamba2", "mamba2_magc")
MATRIX_MAX_LOG2 = 12  # the attention matrices of 2^13 tokens (≈10 GB for 6 layers) do not fit this machine
TOKENS_PER_FRAME = 2  # the packaged model: a time marker and one visual token
MIB = 2**20


def make_lm(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    mamba = packaged_config().lm
    if variant.startswith("mamba2"):
        return Mamba2LM(mamba).set_checkpointing("multi_axis" if variant == "mamba2_magc" else "none")
    return TransformerLM(matched_transformer_config(mamba))


def training_step(lm, variant: str, seq_len: int):
    """One forward + backward on random inputs_embeds (1, seq_len, d), the loss on the last position."""
    x = torch.randn(1, seq_len, lm.config.d_model)
    label = torch.randint(0, lm.config.vocab_size, (1,))
    matrix = variant == "transformer_matrix"

    def step():
        with sdpa_kernel(SDPBackend.MATH) if matrix else nullcontext():
            hidden = lm(inputs_embeds=x, return_logits=False).hidden
            torch.nn.functional.cross_entropy(lm.lm_head(hidden[:, -1]), label).backward()

    return step


def measure_training(log2_lengths, repeats: int) -> list[dict]:
    lms = {v: make_lm(v) for v in VARIANTS}
    for lm in lms.values():  # gradient buffers exist before the step: the peak is above weights and gradients
        for p in lm.parameters():
            p.grad = torch.zeros_like(p)
    rows = []
    for k in log2_lengths:
        seq_len = 2**k
        steps = {
            v: training_step(lm, v, seq_len)
            for v, lm in lms.items()
            if v != "transformer_matrix" or k <= MATRIX_MAX_LOG2
        }
        peaks = {v: peak_bytes(step) for v, step in steps.items()}
        times = {v: [] for v in steps}
        for _ in range(repeats):  # in turns: a, b, c, d, a, b, c, d, …
            for v, step in steps.items():
                start = time.perf_counter()
                step()
                times[v].append(time.perf_counter() - start)
        for v in steps:
            row = dict(
                variant=v,
                seq_len=seq_len,
                peak_bytes=peaks[v],
                seconds_per_token=statistics.median(times[v]) / seq_len,
                repeats=repeats,
            )
            rows.append(row)
            print(
                f"  {v:18s} 2^{k:<2d} peak {peaks[v] / MIB:9.1f} MiB  {1e3 * row['seconds_per_token']:.3f} ms/token",
                flush=True,
            )
    return rows


@torch.inference_mode()
def measure_inference(minutes, repeats: int) -> list[dict]:
    """Stream to each length in chunks, then time single frames from there."""
    rows = []
    for v in ("transformer", "mamba2"):
        lm = make_lm(v).eval()
        d = lm.config.d_model
        state, frames = lm.empty_state(1), 0
        for m in minutes:
            while frames < 60 * m:  # prefill: at most 512 frames a call
                n = min(512, 60 * m - frames)
                state = lm(
                    inputs_embeds=torch.randn(1, n * TOKENS_PER_FRAME, d), state=state, return_logits=False
                ).state
                frames += n
            frame = torch.randn(1, TOKENS_PER_FRAME, d)
            times = []
            for _ in range(repeats):  # each from the same state: the video does not move on
                start = time.perf_counter()
                lm(inputs_embeds=frame, state=state, return_logits=False)
                times.append(time.perf_counter() - start)
            rows.append(
                dict(
                    variant=v,
                    minutes=m,
                    tokens=frames * TOKENS_PER_FRAME,
                    state_bytes=state.nbytes(),
                    ms_per_frame=1e3 * statistics.median(times),
                )
            )
            print(
                f"  {v:12s} {m:4d} min  state {state.nbytes() / MIB:8.2f} MiB  {rows[-1]['ms_per_frame']:.2f} ms/frame",
                flush=True,
            )
    return rows


def measure_accuracy(runs, sets: dict[int, int]) -> dict:
    """sets: held-out video length in minutes -> number of videos."""
    from ma2mba.training import evaluate
    from ma2mba.video.model import VideoMa2mba

    out = {}
    for run in map(Path, runs):
        model = VideoMa2mba.from_pretrained(run / "model")
        kind = "transformer" if isinstance(model.lm, TransformerLM) else "mamba2"
        log = [json.loads(line) for line in open(run / "log.jsonl")]
        started = time.perf_counter()
        report = {}
        for minutes, videos in sets.items():
            report |= evaluate.run(
                model, [minutes], videos=videos, baselines=True, progress=lambda s: print(f"  {kind}: {s}", flush=True)
            )
        out[kind] = {
            "run": str(run),
            "eval": report,
            "eval_seconds": round(time.perf_counter() - started, 1),
            "train_minutes": round(log[-1]["wall_seconds"] / 60, 1),
            "train_steps": len(log),
            "lm_parameters": count_parameters(model.lm),
            "qa_curriculum_level": max(r["level"] for r in log if r["stage"] == "qa"),
            "qa_lengths_trained": sorted({r["length"] for r in log if r["stage"] == "qa"}),
        }
    return out


# --- report ---
def training_table(rows) -> str:
    lengths = sorted({r["seq_len"] for r in rows})
    at = {(r["variant"], r["seq_len"]): r for r in rows}
    head = "| length | " + " | ".join(f"{v} MiB | {v} ms/token" for v in VARIANTS) + " |"
    lines = [head, "|---" * (1 + 2 * len(VARIANTS)) + "|"]
    for s in lengths:
        cells = []
        for v in VARIANTS:
            r = at.get((v, s))
            cells += [f"{r['peak_bytes'] / MIB:.1f}", f"{1e3 * r['seconds_per_token']:.3f}"] if r else ["–", "–"]
        lines.append(f"| 2^{s.bit_length() - 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inference_table(rows) -> str:
    at = {(r["variant"], r["minutes"]): r for r in rows}
    lines = [
        "| video | tokens | KV cache MiB | Mamba-2 state MiB | Transformer ms/frame | Mamba-2 ms/frame |",
        "|---|---|---|---|---|---|",
    ]
    for m in sorted({r["minutes"] for r in rows}):
        t, s = at[("transformer", m)], at[("mamba2", m)]
        lines.append(
            f"| {m} min | {t['tokens']} | {t['state_bytes'] / MIB:.2f} | {s['state_bytes'] / MIB:.2f} | "
            f"{t['ms_per_frame']:.2f} | {s['ms_per_frame']:.2f} |"
        )
    return "\n".join(lines)


def accuracy_table(acc) -> str:
    from ma2mba.training.evaluate import format_table

    return "\n\n".join(
        f"**{kind}** (trained {a['train_minutes']} min, {a['train_steps']} steps; "
        f"QA curriculum reached level {a['qa_curriculum_level']}, lengths {a['qa_lengths_trained']})\n\n"
        + format_table(a["eval"])
        for kind, a in acc.items()
    )


def draw(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    style = {
        "transformer": ("C3", "o-"),
        "transformer_matrix": ("C1", "s--"),
        "mamba2": ("C0", "o-"),
        "mamba2_magc": ("C2", "^-"),
    }
    for v in VARIANTS:
        rows = sorted((r for r in data.get("training", []) if r["variant"] == v), key=lambda r: r["seq_len"])
        if rows:
            color, fmt = style[v]
            xs = [r["seq_len"] for r in rows]
            axes[0].plot(xs, [r["peak_bytes"] / MIB for r in rows], fmt, color=color, label=v)
            axes[1].plot(xs, [1e3 * r["seconds_per_token"] for r in rows], fmt, color=color, label=v)
    for v, color in (("transformer", "C3"), ("mamba2", "C0")):
        rows = [r for r in data.get("inference", []) if r["variant"] == v]
        axes[2].plot(
            [r["minutes"] for r in rows],
            [r["state_bytes"] / MIB for r in rows],
            "o-",
            color=color,
            label="KV cache" if v == "transformer" else "Mamba-2 state",
        )
    titles = ("training: peak memory above weights", "training: time per token", "inference: memory of the past")
    labels = (
        ("sequence length (tokens)", "MiB"),
        ("sequence length (tokens)", "ms / token"),
        ("video watched at 1 FPS (minutes)", "MiB"),
    )
    for ax, title, (xl, yl) in zip(axes, titles, labels):
        if not ax.lines:  # a section not measured yet
            ax.set_axis_off()
            continue
        ax.set_xscale("log", base=2 if ax is not axes[2] else 10)
        ax.set_yscale("log")
        ax.set(title=title, xlabel=xl, ylabel=yl)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Transformer vs Mamba-2 at the packaged model's size (1.45M LM parameters, fp32, batch 1, CPU)")
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    print(f"wrote {FIGURE.relative_to(ROOT)}")


def report(data: dict) -> None:
    if data.get("training"):
        print("\nTraining step (forward + backward, loss on the last position), peak above weights and ms/token:\n")
        print(training_table(data["training"]))
    if data.get("inference"):
        print("\nStreaming: memory of everything seen so far, and the cost of one more frame:\n")
        print(inference_table(data["inference"]))
    if data.get("accuracy"):
        print("\nAccuracy after the same small training budget (recipe shapes_small):\n")
        print(accuracy_table(data["accuracy"]))
    draw(data)


def measure(args) -> dict:
    """The sections named by --only, and the setup they ran on."""
    torch.set_num_threads(args.threads)
    only = args.only.split(",")
    new = dict(
        setup=dict(
            torch=torch.__version__,
            machine=platform.machine(),
            threads=args.threads,
            mamba2=packaged_config().lm.to_dict(),
            transformer=matched_transformer_config(packaged_config().lm).to_dict(),
            lm_parameters={v: count_parameters(make_lm(v)) for v in ("mamba2", "transformer")},
        )
    )
    if "training" in only:
        print("training step:")
        new["training"] = measure_training([int(k) for k in args.log2.split(",")], args.repeats)
    if "inference" in only:
        print("streaming:")
        new["inference"] = measure_inference([int(m) for m in args.minutes.split(",")], args.repeats)
    if "accuracy" in only:
        sets = dict(tuple(map(int, s.split(":"))) for s in args.eval.split(","))
        new["accuracy"] = measure_accuracy(args.runs, sets)
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="training,inference", help="comma-separated: training,inference,accuracy")
    parser.add_argument("--log2", default="8,9,10,11,12,13,14", help="training lengths, as powers of two")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--minutes", default="1,2,10,30,60,120", help="inference: video lengths")
    parser.add_argument("--runs", nargs="*", default=["runs/tvm_mamba2", "runs/tvm_transformer"])
    parser.add_argument("--eval", default="2:40,10:40,60:8", help="accuracy: held-out sets, minutes:videos")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()

    new = {} if args.report_only else measure(args)
    # Read the file only now: the two models' accuracy can be measured by two processes at once
    # (one --runs each), and each adds its model's entry.
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if new:
        data.setdefault("accuracy", {}).update(new.pop("accuracy", {}))
        data.update(new)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    report(data)


if __name__ == "__main__":
    main()
