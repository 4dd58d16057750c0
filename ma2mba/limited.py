"""Heavy work in a child process under a memory limit, so that no request can take its server down.

    for item in iterate_limited(memory_lab.train, "packaged", modes, 32, 3, limit_bytes=4 << 30):
        ...

The child is a fresh `python -m ma2mba.limited` (no fork of a threaded server). It imports the
function's module, then limits its own address space to what it has mapped plus `limit_bytes`; an
allocation past that fails inside the child, which reports it, and the caller gets
ResourceLimitError with a sentence to show. A child that dies or runs past its time is reported the
same way. Closing the iterator (a cancelled request) kills the child. Requests and results travel
as pickles over the child's stdin and stdout: only this module writes them, and only to its own child.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import queue
import resource
import subprocess
import sys
import threading
import time

import psutil


class ResourceLimitError(RuntimeError):
    """Work stopped at its memory or time limit; the message says which and what to change."""


def _is_out_of_memory(error: BaseException) -> bool:
    # numpy raises MemoryError; torch's CPU allocator a RuntimeError that says it cannot allocate
    return isinstance(error, MemoryError) or "can't allocate memory" in str(error)


def _read_replies(stream, replies: queue.Queue) -> None:
    try:
        while True:
            replies.put(pickle.load(stream))
    except (EOFError, pickle.UnpicklingError, OSError):
        replies.put(("exit", None))


def iterate_limited(fn, *args, limit_bytes: int, timeout_s: float | None = None, **kwargs):
    """Yield what fn(*args, **kwargs) yields (or the one value it returns), computed in a limited child.

    fn must be a module-level function. Its exceptions reach the caller as they were raised; running
    out of memory or time raises ResourceLimitError.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "ma2mba.limited"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    pickle.dump((fn.__module__, fn.__qualname__, args, kwargs, limit_bytes), child.stdin)
    child.stdin.close()
    replies = queue.Queue()
    threading.Thread(target=_read_replies, args=(child.stdout, replies), daemon=True).start()
    deadline = time.monotonic() + timeout_s if timeout_s else None
    limit = f"{limit_bytes / 2**30:.1f} GiB"
    try:
        while True:
            try:
                kind, value = replies.get(timeout=0.5)
            except queue.Empty:
                if deadline and time.monotonic() > deadline:
                    raise ResourceLimitError(
                        f"This took longer than its {timeout_s:.0f} s limit and was stopped. "
                        "Ask for less (a shorter clip, fewer steps or modes)."
                    ) from None
                continue
            if kind == "item":
                yield value
            elif kind == "done":
                return
            elif kind == "memory":
                raise ResourceLimitError(
                    f"This needs more than its {limit} memory limit on this machine, so it was stopped. "
                    "Ask for less (a shorter clip, a smaller model, fewer modes)."
                )
            elif kind == "error":
                raise value
            else:  # the child ended without a word: killed, most likely at its limit
                child.wait(timeout=5)
                raise ResourceLimitError(
                    f"This stopped unexpectedly (exit code {child.returncode}), probably at its {limit} memory "
                    "limit. Ask for less."
                )
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=5)
        child.stdout.close()


def call_limited(fn, *args, limit_bytes: int, timeout_s: float | None = None, **kwargs):
    """fn(*args, **kwargs) computed in a limited child (see iterate_limited)."""
    items = iterate_limited(fn, *args, limit_bytes=limit_bytes, timeout_s=timeout_s, **kwargs)
    try:
        return next(items)
    finally:
        items.close()


def _serve() -> None:
    """The child: read one request from stdin, answer on stdout."""
    module, name, args, kwargs, limit_bytes = pickle.load(sys.stdin.buffer)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever the work prints must not corrupt the replies

    def reply(kind, value=None):
        pickle.dump((kind, value), out)
        out.flush()

    try:
        fn = importlib.import_module(module)
        for part in name.split("."):
            fn = getattr(fn, part)
        mapped = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (mapped + limit_bytes, mapped + limit_bytes))
        result = fn(*args, **kwargs)
        for item in result if inspect.isgenerator(result) else [result]:
            reply("item", item)
        reply("done")
    except Exception as e:
        reply("memory") if _is_out_of_memory(e) else reply("error", e)


if __name__ == "__main__":
    _serve()
