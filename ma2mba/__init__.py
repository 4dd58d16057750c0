"""ma2mba: Video-Ma²mba (arXiv 2411.19460) — every frame of a long video in a Mamba-2 state."""

from .engine.config import Mamba2Config
from .engine.lm import Mamba2LM
from .engine.state import State

__all__ = ["Mamba2Config", "Mamba2LM", "State", "VideoMa2mba", "load_model"]
__version__ = "0.2.0"


def __getattr__(name):  # the video model pulls in more; import it only when asked for
    if name == "VideoMa2mba":
        from .video.model import VideoMa2mba

        return VideoMa2mba
    if name == "load_model":
        from .packaged import load_model

        return load_model
    raise AttributeError(name)
