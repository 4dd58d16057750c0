"""What training keeps, measured (meter.py) and traded for recompute (checkpointing.py).

`ma2mba.memory.peak_bytes(fn)` and the timeline functions are the meter's.
"""

from .meter import LiveStorages, MemoryTimeline, peak_bytes, record_timeline, tensor_bytes, without_data

__all__ = ["LiveStorages", "MemoryTimeline", "peak_bytes", "record_timeline", "tensor_bytes", "without_data"]
