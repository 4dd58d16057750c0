"""Work in a memory-limited child: results come back, exceptions come back, and an allocation past the
limit is a ResourceLimitError while the caller lives on."""

import math
import time

import numpy as np
import pytest

from ma2mba import memory_lab
from ma2mba.limited import ResourceLimitError, call_limited, iterate_limited


def test_results_and_yielded_items_come_back():
    assert call_limited(math.factorial, 20, limit_bytes=1 << 30) == math.factorial(20)
    reach = call_limited(memory_lab.longest_clips, "packaged", 2**30, limit_bytes=1 << 30)
    assert reach == memory_lab.longest_clips("packaged", 2**30)  # the same answer as in this process


def test_the_works_own_errors_come_back_as_they_were_raised():
    with pytest.raises(memory_lab.LabError, match="Unknown model size"):
        call_limited(memory_lab.longest_clips, "huge", 2**30, limit_bytes=1 << 30)


def test_an_allocation_past_the_limit_stops_the_child_not_the_caller():
    with pytest.raises(ResourceLimitError, match="more than its 0.5 GiB memory limit"):
        call_limited(np.ones, 10**9, limit_bytes=1 << 29)  # 8 GB of float64
    assert call_limited(np.ones, 10, limit_bytes=1 << 29).sum() == 10  # the next request is served


def test_a_child_past_its_time_is_stopped():
    started = time.monotonic()
    with pytest.raises(ResourceLimitError, match="longer than its 2 s limit"):
        list(iterate_limited(time.sleep, 60, limit_bytes=1 << 29, timeout_s=2))
    assert time.monotonic() - started < 15
