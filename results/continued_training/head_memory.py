"""How much of what a Mamba-2 head wrote at a video's start is left at its end.

A head's state decays by exp(-dt_t * A) at every token, dt_t = softplus(dt_bias + W x_t) depending on
the token. This measures the product over a 2-minute video's 240 tokens (dt averaged per token over
four videos whose seeds neither training nor evaluation uses), per layer and head: 1.0 keeps
everything, 0.0 forgets it.

    python results/continued_training/head_memory.py [--model assets/ma2mba-shapes]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ma2mba import evaluate  # noqa: E402
from ma2mba.data import shapeworld  # noqa: E402

PROBE_SEED = 9_100_000  # neither a training (>= 2^32) nor an evaluation (2^28 + …) seed


@torch.no_grad()
def decay_over_video(model, seconds: int = 120, videos: int = 4) -> list[torch.Tensor]:
    """Per layer, (nheads,): the fraction of a head's state left after `seconds` of video."""
    dts = {}

    def keep_dt(i, mixer):
        def hook(_, __, out):
            dts.setdefault(i, []).append(F.softplus(out[..., -mixer.cfg.nheads:].float() + mixer.dt_bias.float()))
        return hook

    layers = model.lm.backbone.layers
    hooks = [layer.mixer.in_proj.register_forward_hook(keep_dt(i, layer.mixer)) for i, layer in enumerate(layers)]
    try:
        clips = [shapeworld.generate(PROBE_SEED + s, seconds) for s in range(videos)]
        frames = np.stack([evaluate.raw_frames(model, v, range(seconds)) for v in clips])
        evaluate.watch(model.eval(), frames, np.arange(seconds))
    finally:
        for h in hooks:
            h.remove()
    out = []
    for i, layer in enumerate(layers):
        dt = torch.cat(dts[i][1:], dim=1).mean(0)  # (tokens, nheads); [0] is the system prompt
        out.append(torch.exp(-(dt * torch.exp(layer.mixer.A_log.float())).sum(0)))
    return out


def main():
    from ma2mba import load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder (default: the packaged model)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model)
    print("layer | fraction left after a 2-minute video, per head | A = exp(A_log) per head")
    for i, (left, layer) in enumerate(zip(decay_over_video(model), model.lm.backbone.layers)):
        print(i, "|", " ".join(f"{v:.3f}" for v in left.tolist()), "|",
              " ".join(f"{v:.1f}" for v in torch.exp(layer.mixer.A_log.float()).tolist()))


if __name__ == "__main__":
    main()
