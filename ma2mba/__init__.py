"""ma2mba: Video-Ma²mba (arXiv 2411.19460) — every frame of a long video in a Mamba-2 state."""

from .config import Mamba2Config
from .lm import Mamba2LM, State

__all__ = ["Mamba2Config", "Mamba2LM", "State", "VideoMa2mba", "load_model"]
__version__ = "0.1.0"


def __getattr__(name):  # the video model pulls in more; import it only when asked for
    if name in ("VideoMa2mba", "load_model"):
        from . import model

        return getattr(model, name)
    raise AttributeError(name)
