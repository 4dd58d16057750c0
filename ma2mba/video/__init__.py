"""The video model and what feeds it: decoding, frame encoders, tokenizer, time markers, VideoMa2mba.

`ma2mba.video.sample_frames`, `probe` and `VideoError` are the decoding API (video/decode.py).
"""

from .decode import VideoError, VideoInfo, frame_source, probe, sample_frames

__all__ = ["VideoError", "VideoInfo", "frame_source", "probe", "sample_frames"]
