"""Executors: a worker process that dies costs only its own task."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

from detector import executors


def double_or_die(x: int) -> int:
    if x == 3:
        os._exit(1)  # a real process death, as when the kernel kills a worker for memory
    return x * 2


def test_a_dying_worker_fails_only_its_own_task() -> None:
    results = dict(executors.local(double_or_die, range(10), workers=2))
    assert sorted(results) == list(range(10))
    assert isinstance(results.pop(3), BrokenProcessPool)
    assert results == {x: 2 * x for x in range(10) if x != 3}
