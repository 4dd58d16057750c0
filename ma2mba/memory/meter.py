"""Tensor memory measured while code runs: the peak, and the timeline of a training step.

CPU: a TorchDispatchMode sees every tensor that every operator returns, below autograd, so the
gradient buffers and the tensors saved for backward are seen too. Each storage is counted once,
from the operator that creates it until it is freed (a `weakref.finalize` on the storage fires
when its last tensor or view goes away). We chose this over `torch.profiler(profile_memory=True)`
because
  - it is exact and deterministic: live bytes after every operator are the sum of the storages
    that exist, nothing is sampled or inferred from event pairs;
  - its cost is one Python call per operator, where the profiler keeps an event per operator
    and allocation, which does not scale to the millions of operators of a long sequence;
  - it works on fake tensors (`without_data()`: shapes, dtypes and devices, no data), so the
    allocations of a step too large for this machine's RAM or patience are measured on the
    same code path, operator for operator.
What it cannot see: scratch buffers that a kernel allocates and frees inside one operator
(matmul packing, for example). They are short-lived and not what gradient checkpointing trades.

CUDA: the caching allocator's own counters (`reset_peak_memory_stats` / `max_memory_allocated`),
which do include such scratch buffers.

Every figure is the peak above what was alive before `fn` started (weights, inputs, gradient
buffers that already exist), as the paper reports peak memory above the loaded weights.
"""

from __future__ import annotations

import weakref
from array import array
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveStorages(TorchDispatchMode):
    """Counts the bytes of the storages created while it is active and still alive."""

    def __init__(self, record: bool = False):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.sizes: dict[int, int] = {}  # storage id -> bytes counted for it
        self.timeline = array("q") if record else None  # live bytes after each operator

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                # A view or in-place result of a storage that predates us (a weight) is no allocation.
                if storage._cdata in self.sizes or storage._cdata not in inputs:
                    self._track(storage)
        self.peak = max(self.peak, self.live)
        if self.timeline is not None:
            self.timeline.append(self.live)
        return out

    def _track(self, storage):
        key, nbytes = storage._cdata, storage.nbytes()
        if key not in self.sizes:  # a new storage (views and in-place results reuse one)
            self.sizes[key] = 0
            weakref.finalize(storage, self._free, key)
        self.live += nbytes - self.sizes[key]  # a resized storage changes size in place
        self.sizes[key] = nbytes

    def _free(self, key):
        self.live -= self.sizes.pop(key)


def without_data():
    """A context in which new tensors are fake: CPU tensors with shapes and dtypes but no data,
    whose operators only work out their outputs' shapes. Code run inside allocates as it would
    on the CPU, so the meter measures it, in none of the memory and little of the time."""
    return FakeTensorMode()


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def peak_bytes(fn, device="cpu") -> int:
    """Peak bytes of tensor memory above what was alive before, while `fn()` runs on `device`."""
    if _is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveStorages() as meter:
        fn()
    return meter.peak


@dataclass
class MemoryTimeline:
    """Live tensor bytes above the starting point after each operator of one run of `fn`."""

    live_bytes: array  # one entry per operator, in execution order
    peak: int

    def downsample(self, points: int = 1000) -> list[int]:
        """At most `points` values, each the maximum of its stretch, so no peak is lost in a plot."""
        n = len(self.live_bytes)
        step = max(1, -(-n // points))
        return [max(self.live_bytes[i : i + step]) for i in range(0, n, step)]


def record_timeline(fn) -> MemoryTimeline:
    """Run `fn()` and return its memory timeline (operator index -> live bytes). Any device."""
    with LiveStorages(record=True) as meter:
        fn()
    return MemoryTimeline(meter.timeline, meter.peak)


def tensor_bytes(obj) -> int:
    """Bytes of the distinct storages held by a tensor, a nested structure of tensors (a State),
    or a module (parameters and buffers, tied weights counted once)."""
    if isinstance(obj, torch.nn.Module):
        obj = [*obj.parameters(), *obj.buffers()]
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in _tensors(obj)}
    return sum(storages.values())


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):  # State is a tuple of (conv, ssm) pairs
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)
