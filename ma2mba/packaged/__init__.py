"""The packaged ShapeWorld model: its recipe (recipe.py), loading, model card and example videos.

The model folder ships in the repository, at assets/ma2mba-shapes, beside the package.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGED_MODEL_DIR = REPO_ROOT / "assets" / "ma2mba-shapes"


def load_model(name_or_path=None, device="cpu"):
    """The packaged ShapeWorld model (offline) by default, or any Video-Ma²mba folder or Hub repo id.

    Never falls back to anything: a missing, damaged or mismatched file raises ModelNotFoundError
    (or its subclass ModelFileError) naming the file and what is wrong with it.
    """
    from ..video.model import VideoMa2mba

    return VideoMa2mba.from_pretrained(PACKAGED_MODEL_DIR if name_or_path is None else name_or_path, device)
