"""The packaged model's model card (README.md of its folder), written from measured facts."""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

import psutil
import torch

from ..engine.lm import count_parameters
from ..training.evaluate import format_table
from ..training.trainer import Stage
from ..video.model import VideoMa2mba

LIMITS = """\
## What it knows, and what it does not

- It knows **ShapeWorld** only: filled circles, squares, triangles and stars in seven colours
  (red, green, blue, yellow, purple, orange, white) on plain or noisy dark backgrounds, and the
  seven question types of the evaluation table, phrased as in training. It has never seen a real video: on your
  holiday clip it will answer in ShapeWorld terms, confidently and wrongly.
- For real videos load a real Video-Ma²mba checkpoint (CLIP ViT-L/14-336 + Mamba-2) in the
  Model tab or with `load_model("<repo id or folder>")`.
- Questions outside the templates (other words, other phrasings) are read through an unknown-word
  token and answered unreliably.
"""


def hardware() -> str:
    return f"{psutil.cpu_count(logical=True)} CPU cores ({platform.machine()}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, no GPU"


def parameter_table(model: VideoMa2mba) -> str:
    rows = [
        ("vision encoder", model.vision),
        ("projector", model.projector),
        ("time markers", model.time_embed),
        ("Mamba-2 LM", model.lm),
    ]
    lines = ["| part | parameters |", "|---|---|"]
    lines += [f"| {name} | {count_parameters(m):,} |" for name, m in rows]
    lines.append(f"| **total** | **{count_parameters(model):,}** |")
    return "\n".join(lines)


def stage_table(stages) -> str:
    lines = [
        "| stage | task | steps | peak lr | video lengths (s) | vision | checkpointing | LM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        s = dataclasses.asdict(s)
        lengths = ", ".join(map(str, s["lengths"])) if s["task"] in ("captions", "qa") else "single frames"
        lm = f"gains MLPs of width {s['grow_mlp']}" if s["grow_mlp"] else ("—" if s["task"] == "kinds" else "trained")
        lines.append(
            f"| {s['name']} | {s['task']} | {s['steps']} | {s['lr']:g} | {lengths} | "
            f"{'trained' if s['train_vision'] else 'frozen'} | {s['checkpointing']} | {lm} |"
        )
    return "\n".join(lines)


def model_card(
    model: VideoMa2mba, stages, command: str, wall_seconds: float, eval_table: str, eval_command: str, notes: str = ""
) -> str:
    c = model.config
    s = c.lm.ssm
    notes = notes.rstrip() + "\n" if notes else ""
    mlp = (
        f"a gated MLP of width {c.lm.d_intermediate} after each mixer (mamba_ssm's d_intermediate), "
        if c.lm.d_intermediate
        else ""
    )
    return f"""---
license: apache-2.0
tags: [video-ma2mba, mamba2, video-question-answering, shapeworld]
---
# ma2mba-shapes: a small Video-Ma²mba that watches every frame

A Video-Ma²mba (arXiv 2411.19460) trained from scratch, on a CPU, on procedurally generated
**ShapeWorld** videos. It reads every frame at 1 FPS into a Mamba-2 state of
{model.start_session().state.nbytes() / 1024:.0f} KiB, whatever the video's length, and then answers
questions that only a model that saw every frame can answer: counts over the whole video,
order, and when a rare object appeared.

## Architecture

- Frames are letterboxed to {c.vision.image_size}×{c.vision.image_size} and read by a small CNN
  (detector-style: the strongest response per region, then the paper's 2×2 pooling) into
  {model.vision.tokens_per_frame} token(s); a 2-layer GELU MLP projects them into the LM.
- Every frame is preceded by a time-marker token (a linear map of the digits of m:ss), so the
  model knows when each frame was shown.
- Mamba-2 LM: d_model {c.lm.d_model}, {c.lm.n_layer} layers, {s.nheads} heads of dim {s.headdim},
  d_state {s.d_state}, {mlp}tied embeddings; chat template of the paper
  (`<|system|>…<|endoftext|><|user|>` frames, question `<|endoftext|><|assistant|>` answer).

{parameter_table(model)}

## Evaluation (held-out seeds)

{eval_table}

Reproduce: `{eval_command}`

{LIMITS}
## Training

{stage_table(stages)}

- Command: `{command}`
- Wall time: {wall_seconds / 3600:.1f} h of training on {hardware()} (shared with other work while it ran).
- Every question branches from the LM state at one of several moments of its video, so one pass
  over a video supervises many answers at many lengths; stage 2 climbs a curriculum of video
  lengths, promoted when the running accuracy passes the stage's threshold.
{notes}
## Use

```python
from ma2mba import load_model
from ma2mba.video import sample_frames

session = load_model().start_session()
for t, frame in sample_frames("clip.mp4", fps=1.0):
    session.ingest(frame, t)
print(session.answer("How many times did a red star appear?"))
print(session.answer("What was the last shape to appear?", at=60))  # as of 1:00
```
"""


def merged_eval(paths) -> dict:
    """Several `python -m ma2mba eval --out` files (one per held-out set) as one report."""
    report = {}
    for path in paths:
        report.update(json.loads(Path(path).read_text()))
    return dict(sorted(report.items(), key=lambda kv: float(kv[0].removesuffix("min"))))


def package(run_dir, eval_paths, out, train_command: str, eval_command: str, notes: str = "") -> None:
    """The finished run's weights, tokenizer and config, plus a model card, into the folder `out`."""
    run_dir = Path(run_dir)
    model = VideoMa2mba.from_pretrained(run_dir / "model")
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    report = merged_eval(eval_paths)
    stages = [Stage(**s) for s in checkpoint["stages"]]
    card = model_card(model, stages, train_command, checkpoint["seconds"], format_table(report), eval_command, notes)
    model.save_pretrained(out, model_card=card)
    (Path(out) / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
