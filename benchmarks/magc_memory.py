"""Peak memory, planner prediction and speed of every gradient-checkpointing mode (issue 3).

Setup: the mamba2-130m shape (d_model 768, 24 layers, vocab 50277, random weights), float32,
batch 1, one forward + backward whose loss reads the last position only (as the paper measures:
the backbone's activations, no logits where there is no label). Gradient buffers exist before the
step, so "peak" is the peak above the weights and their gradients.

Every number comes from ma2mba.memory's meter, in one of two ways:
  cpu   the real step on this CPU: peak bytes and seconds per token;
  fake  the same step on fake tensors (ma2mba.memory.without_data: shapes, no data, no
        arithmetic): the same code and the same allocations, so lengths beyond this machine's
        RAM and time are measured as well. Where both ran, the two peaks are compared.

Each point runs in a fresh process and is cached in results/magc_memory.json with a fingerprint
of the code it measured. A rerun measures only what the current code lacks (extend with
--fake-log2 / --cpu-log2 / --repeats) and reports only points of the current code.

    python benchmarks/magc_memory.py                 # measure what is missing, print, draw
    python benchmarks/magc_memory.py --report-only   # table and figure from the JSON
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ma2mba import Mamba2Config, Mamba2LM
from ma2mba.memory import peak_bytes, without_data
from ma2mba.memory.checkpointing import MODES, max_seq_len, predict_peak_bytes

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "results" / "magc_memory.json"
FIGURE = ROOT / "assets" / "magc_memory.png"
CONFIG = Mamba2Config(d_model=768, n_layer=24, vocab_size=50277)
MEASURED_CODE = [
    "ma2mba/engine/ssd.py",
    "ma2mba/engine/mamba2.py",
    "ma2mba/engine/state.py",
    "ma2mba/engine/lm.py",
    "ma2mba/memory/checkpointing.py",
    "ma2mba/memory/meter.py",
]
GIB = 2**30

# Video-Ma²mba Table 3 (2.7B, peak GB above weights; max length on an 80 GB A100).
PAPER = {
    "at_2^14_gb": {"none": 42.6, "layer": 17.4, "sqrt": 8.7, "multi_axis": 4.2},
    "longest_log2": {"none": 14, "layer": 16, "sqrt": 17, "multi_axis": 19},
    "ms_per_token": {"layer": 0.118, "multi_axis": 0.126},
}


def fingerprint() -> str:
    """A hash of the measured code's syntax: comments, docstrings and layout do not count."""
    h = hashlib.sha256()
    for name in MEASURED_CODE:
        tree = ast.parse((ROOT / name).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (
                isinstance(body, list)
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
        h.update(ast.dump(tree).encode())
    return h.hexdigest()[:16]


# --- one point, in its own process ---


def measure_point(mode: str, seq_len: int, device: str, threads: int) -> dict:
    """device: "cpu" or "fake"."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with without_data() if device == "fake" else contextlib.nullcontext():
        lm = Mamba2LM(CONFIG).set_checkpointing(mode)
        for p in lm.parameters():
            p.grad = torch.zeros_like(p)
        ids = torch.randint(0, CONFIG.vocab_size, (1, seq_len))
        label = torch.randint(0, CONFIG.vocab_size, (1,))

        def step():
            hidden = lm(ids, return_logits=False).hidden
            torch.nn.functional.cross_entropy(lm.lm_head(hidden[:, -1]), label).backward()

        start = time.perf_counter()
        peak = peak_bytes(step)
        seconds = time.perf_counter() - start
    l, s = lm.backbone.checkpointing.grid(seq_len, 1, torch.float32) if mode == "multi_axis" else (None, None)
    return dict(
        mode=mode,
        seq_len=seq_len,
        device=device,
        peak_bytes=peak,
        seconds=seconds,
        layers_per_block=l,
        tokens_per_segment=s,
    )


def run_point(mode, seq_len, device, threads, timeout) -> dict | None:
    cmd = [sys.executable, __file__, "--point", mode, str(seq_len), device, "--threads", str(threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout
    except subprocess.TimeoutExpired:
        print(f"  {mode} S={seq_len} {device}: over {timeout} s, skipped", flush=True)
        return None
    except subprocess.CalledProcessError as e:
        print(f"  {mode} S={seq_len} {device}: failed\n{e.stderr[-2000:]}", flush=True)
        return None
    return json.loads(out.strip().splitlines()[-1])


# --- the sweep ---


def key(p: dict) -> tuple:
    return p["mode"], p["seq_len"], p["device"], p["round"]


def load(fp: str, path: Path) -> dict:
    data = json.loads(path.read_text()) if path.exists() else {"points": []}
    data["fingerprint"] = fp
    current = {key(p) for p in data["points"] if p["code"] == fp}
    stale = [p for p in data["points"] if p["code"] != fp and key(p) not in current]
    if stale:
        print(f"{len(stale)} cached points measured older code: they are kept, not reported, and measured again")
    return data


def save(data: dict, path: Path) -> None:
    # A point of older code goes once the current code has measured it.
    current = {key(p) for p in data["points"] if p["code"] == data["fingerprint"]}
    data["points"] = [p for p in data["points"] if p["code"] == data["fingerprint"] or key(p) not in current]
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def sweep(args, data: dict) -> None:
    done = {key(p) for p in data["points"] if p["code"] == data["fingerprint"]}

    todo = [
        (mode, 2**k, "fake", 0)
        for k in args.fake_log2
        for mode in MODES
        if mode == "multi_axis" or k <= args.fake_log2_baselines
    ]
    for r in range(args.repeats):  # rounds interleave the modes, so slow spells hit them alike
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
        for k in args.cpu_log2:
            S = 2**k
            todo += [
                (mode, S, "cpu", r) for mode in order if predict_peak_bytes(CONFIG, S, mode) <= args.ram_limit_gib * GIB
            ]
    for mode, S, device, r in todo:
        if (mode, S, device, r) in done:
            continue
        print(f"measuring {mode} S={S} on {device} (round {r})", flush=True)
        point = run_point(mode, S, device, args.threads, args.timeout)
        if point is not None:
            data["points"].append({**point, "round": r, "threads": args.threads, "code": data["fingerprint"]})
            save(data, Path(args.out))  # each point as it comes: a long sweep can resume


# --- the report ---


def summarize(data: dict, budget: int) -> dict:
    points = [p for p in data["points"] if p["code"] == data["fingerprint"]]
    lengths = sorted({p["seq_len"] for p in points})
    rows = {}
    for mode in MODES:
        for S in lengths:
            mine = [p for p in points if p["mode"] == mode and p["seq_len"] == S]
            if not mine:
                continue
            peaks = {p["device"]: p["peak_bytes"] for p in mine}
            cpu_times = [p["seconds"] for p in mine if p["device"] == "cpu"]
            grid = next(p for p in mine)
            measured = peaks.get("cpu", peaks.get("fake"))
            predicted = predict_peak_bytes(
                CONFIG,
                S,
                mode,
                layers_per_block=grid["layers_per_block"],
                tokens_per_segment=grid["tokens_per_segment"],
            )
            rows[f"{mode}@{S}"] = dict(
                mode=mode,
                seq_len=S,
                measured_bytes=measured,
                predicted_bytes=predicted,
                prediction_error=predicted / measured - 1,
                cpu_equals_fake=peaks["cpu"] == peaks["fake"] if len(peaks) == 2 else None,
                seconds_per_token=statistics.median(cpu_times) / S if cpu_times else None,
                cpu_runs=len(cpu_times),
                layers_per_block=grid["layers_per_block"],
                tokens_per_segment=grid["tokens_per_segment"],
            )
    longest_measured = {}  # mode -> (longest measured S within budget, whether a longer one was measured over it)
    for mode in MODES:
        mine = [r for r in rows.values() if r["mode"] == mode]
        fits = max((r["seq_len"] for r in mine if r["measured_bytes"] <= budget), default=None)
        over = any(r["seq_len"] > (fits or 0) and r["measured_bytes"] > budget for r in mine)
        longest_measured[mode] = (fits, over)
    longest_planned = {mode: max_seq_len(CONFIG, budget, mode) for mode in MODES}

    def at(mode, S, key="measured_bytes"):
        r = rows.get(f"{mode}@{S}")
        return r and r[key]

    S14 = 2**14
    speed = {
        S: at("multi_axis", S, "seconds_per_token") / at("layer", S, "seconds_per_token")
        for S in lengths
        if at("multi_axis", S, "seconds_per_token") and at("layer", S, "seconds_per_token")
    }
    ours_at_14 = {mode: at(mode, S14) for mode in MODES}
    return dict(
        rows=rows,
        budget_bytes=budget,
        longest_measured=longest_measured,
        longest_planned=longest_planned,
        ratios_at_2_14=dict(
            ours={
                f"multi_axis/{m}": ours_at_14["multi_axis"] / ours_at_14[m]
                for m in ("none", "layer", "sqrt")
                if ours_at_14["multi_axis"] and ours_at_14[m]
            },
            paper={
                f"multi_axis/{m}": PAPER["at_2^14_gb"]["multi_axis"] / PAPER["at_2^14_gb"][m]
                for m in ("none", "layer", "sqrt")
            },
        ),
        longest_ratio=dict(
            ours=longest_measured["multi_axis"][0] / longest_measured["none"][0]
            if longest_measured["multi_axis"][0] and longest_measured["none"][0]
            else None,
            paper=2 ** (PAPER["longest_log2"]["multi_axis"] - PAPER["longest_log2"]["none"]),
        ),
        speed_multi_axis_over_layer=dict(
            ours=speed, paper=PAPER["ms_per_token"]["multi_axis"] / PAPER["ms_per_token"]["layer"]
        ),
        worst_prediction_error={
            mode: max((abs(r["prediction_error"]) for r in rows.values() if r["mode"] == mode), default=None)
            for mode in MODES
        },
        paper=PAPER,
    )


def fmt_bytes(n):
    return "—" if n is None else f"{n / GIB:.2f}"


def print_report(summary: dict) -> None:
    rows = summary["rows"]
    lengths = sorted({r["seq_len"] for r in rows.values()})
    print(
        "\nPeak memory above weights and gradients, GiB: measured (planner's prediction); "
        "† measured on fake tensors only\n"
    )
    print("| S | " + " | ".join(MODES) + " | MA-GC grid (l, s) |")
    print("|---|" + "---|" * (len(MODES) + 1))
    for S in lengths:
        cells = []
        for mode in MODES:
            r = rows.get(f"{mode}@{S}")
            mark = "" if r is None or r["cpu_runs"] else "†"
            cells.append(
                "—" if r is None else f"{fmt_bytes(r['measured_bytes'])}{mark} ({fmt_bytes(r['predicted_bytes'])})"
            )
        ma = rows.get(f"multi_axis@{S}")
        grid = f"({ma['layers_per_block']}, {ma['tokens_per_segment']})" if ma else "—"
        print(f"| 2^{int(math.log2(S))} | " + " | ".join(cells) + f" | {grid} |")
    print("\nSeconds per token on this CPU (median of runs; runs):\n")
    print("| S | " + " | ".join(MODES) + " | MA-GC / layer |")
    print("|---|" + "---|" * (len(MODES) + 1))
    for S in lengths:
        times = [rows.get(f"{m}@{S}", {}).get("seconds_per_token") for m in MODES]
        if not any(times):
            continue
        runs = [rows.get(f"{m}@{S}", {}).get("cpu_runs", 0) for m in MODES]
        cells = ["—" if t is None else f"{t * 1e3:.1f} ms ({n})" for t, n in zip(times, runs)]
        ratio = summary["speed_multi_axis_over_layer"]["ours"].get(S)
        print(f"| 2^{int(math.log2(S))} | " + " | ".join(cells) + f" | {'—' if ratio is None else f'{ratio:.2f}'} |")
    b = summary["budget_bytes"] / GIB
    print(f"\nLongest S whose step fits in {b:.0f} GiB (measured powers of two; planner, any length):\n")
    print("| mode | measured | planner | paper (80 GB, 2.7B) |")
    print("|---|---|---|---|")
    for mode in MODES:
        fits, over = summary["longest_measured"][mode]
        measured = "—" if fits is None else ("" if over else "≥ ") + f"2^{int(math.log2(fits))}"
        print(f"| {mode} | {measured} | {summary['longest_planned'][mode]} | 2^{PAPER['longest_log2'][mode]} |")
    print("\nRatios, ours beside the paper's Table 3:\n")
    print("| ratio | ours | paper |")
    print("|---|---|---|")
    r14 = summary["ratios_at_2_14"]
    for key, paper in r14["paper"].items():
        ours = r14["ours"].get(key)
        print(f"| peak at 2^14, {key} | {'—' if ours is None else f'{ours:.3f}'} | {paper:.3f} |")
    lr = summary["longest_ratio"]
    bracketed = summary["longest_measured"]["multi_axis"][1]  # else MA-GC may fit longer still
    ours = "—" if lr["ours"] is None else ("" if bracketed else "≥ ") + f"{lr['ours']:.0f}×"
    print(f"| longest S, multi_axis / none | {ours} | {lr['paper']}× |")
    sp = summary["speed_multi_axis_over_layer"]
    ours = ", ".join(f"{v:.2f} at 2^{int(math.log2(S))}" for S, v in sorted(sp["ours"].items())) or "—"
    print(f"| time per token, multi_axis / layer | {ours} | {sp['paper']:.2f} |")
    worst = summary["worst_prediction_error"]
    print(
        "\nWorst planner error per mode: " + ", ".join(f"{m} {100 * e:.1f}%" for m, e in worst.items() if e is not None)
    )
    mismatched = [k for k, r in rows.items() if r["cpu_equals_fake"] is False]
    both = [k for k, r in rows.items() if r["cpu_equals_fake"] is not None]
    print(
        f"CPU and fake-tensor peaks identical at {len(both) - len(mismatched)} of {len(both)} points measured both ways"
        + (f"; differ at {mismatched}" if mismatched else "")
    )


def draw(summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = {"none": "no checkpointing", "layer": "per-layer", "sqrt": "√L layers", "multi_axis": "MA-GC (planned)"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, color in zip(MODES, ("tab:red", "tab:orange", "tab:green", "tab:blue")):
        rows = sorted((r for r in summary["rows"].values() if r["mode"] == mode), key=lambda r: r["seq_len"])
        ax.plot(
            [r["seq_len"] for r in rows],
            [r["measured_bytes"] / GIB for r in rows],
            "o-",
            color=color,
            label=f"{names[mode]}, measured",
        )
        S = [2**k for k in range(10, 21)]  # the planner also where nothing was measured
        ax.plot(
            S,
            [predict_peak_bytes(CONFIG, n, mode) / GIB for n in S],
            "--",
            color=color,
            alpha=0.7,
            label=f"{names[mode]}, planner",
        )
    budget = summary["budget_bytes"] / GIB
    ax.axhline(budget, color="gray", lw=1, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.text(ax.get_xlim()[0], budget * 1.08, f" {budget:.0f} GiB budget", color="gray", ha="left", va="bottom")
    ax.set_xlabel("sequence length S (tokens)")
    ax.set_ylabel("peak memory above weights (GiB)")
    ax.set_title("mamba2-130m shape, fp32, batch 1, one forward + backward")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--fake-log2", type=int, nargs="*", default=list(range(10, 19)), help="log2 S traced on fake tensors"
    )
    ap.add_argument(
        "--fake-log2-baselines",
        type=int,
        default=16,
        help="trace none/layer/sqrt only up to this log2 S (past the budget for all three)",
    )
    ap.add_argument("--cpu-log2", type=int, nargs="*", default=[10, 11], help="log2 S run on the CPU")
    ap.add_argument("--repeats", type=int, default=3, help="CPU rounds (timing medians)")
    ap.add_argument("--ram-limit-gib", type=float, default=10, help="skip CPU points predicted above this")
    ap.add_argument("--budget-gib", type=float, default=12)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; one, as the 2 shared cores here make a second thread mostly wait",
    )
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per point")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--out", default=str(RESULTS), help="the JSON file of points (measured points are reused)")
    ap.add_argument("--point", nargs=3, metavar=("MODE", "S", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:
        mode, S, device = args.point
        print(json.dumps(measure_point(mode, int(S), device, args.threads)))
        return
    data = load(fingerprint(), Path(args.out))
    if not args.report_only:
        sweep(args, data)
    data["setup"] = dict(
        config=CONFIG.to_dict(),
        dtype="float32",
        batch=1,
        loss="last position only",
        baseline="weights and gradient buffers allocated before the step",
    )
    data["summary"] = summarize(data, int(args.budget_gib * GIB))
    save(data, Path(args.out))
    print_report(data["summary"])
    if Path(args.out) == RESULTS:  # the figure shows the full sweep only
        draw(data["summary"])


if __name__ == "__main__":
    main()
