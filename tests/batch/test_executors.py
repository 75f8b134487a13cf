"""Executors: a worker process that dies costs only its own task."""

from __future__ import annotations

import os
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from detector.batch import executors


def double_or_die(x: int) -> int:
    if x == 3:
        os._exit(1)  # a real process death, as when the kernel kills a worker for memory
    return x * 2


def test_a_dying_worker_fails_only_its_own_task() -> None:
    results = dict(executors.local(double_or_die, range(10), workers=2))
    assert sorted(results) == list(range(10))
    assert isinstance(results.pop(3), BrokenProcessPool)
    assert results == {x: 2 * x for x in range(10) if x != 3}


def double_or_die_late(x: int) -> int:
    if x == 3:
        time.sleep(0.3)
        os._exit(1)
    return x * 2


@pytest.mark.slow
def test_a_worker_dying_while_the_caller_is_busy_fails_only_its_own_task() -> None:
    """The pool breaks between two submissions (the caller was writing a result): no task is lost."""
    results = {}
    for task, result in executors.local(double_or_die_late, range(10), workers=2):
        results[task] = result
        time.sleep(0.5)  # the caller's own work, during which task 3's worker dies
    assert sorted(results) == list(range(10))
    assert isinstance(results.pop(3), BrokenProcessPool)
    assert results == {x: 2 * x for x in range(10) if x != 3}


def mark_worker() -> None:
    os.environ["DETECTOR_TEST_SETUP"] = "ran"


def setup_marks() -> dict[str, str | None]:
    return {"mark": os.environ.get("DETECTOR_TEST_SETUP")}


def test_dask_setup_reaches_workers_that_join_later() -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        from detector.batch.dask_plugin import SetupEachWorker

        client.register_plugin(SetupEachWorker(mark_worker))
        cluster.scale(2)
        client.wait_for_workers(2, timeout=60)
        marks = client.run(setup_marks)
    assert len(marks) == 2
    assert all(m == {"mark": "ran"} for m in marks.values())


@pytest.mark.parametrize("address", ["scheduler:8786", "tcp://10.0.0.5:8786", "tls://host:8786", "ws://host:8786",
                                     "tcp://[::1]:8786", "local:2"])
def test_every_address_a_dask_client_takes_passes_the_check(address: str) -> None:
    from detector.batch.executors import check_address

    check_address(address)


@pytest.mark.parametrize("address", ["nope", "tcp://", "tcp://host:port", "tcp://::1:8786", "local:0", "local:\u00b2",
                                     "foo://host:1", "localhost:99999"])
def test_an_address_no_client_can_reach_is_refused(address: str) -> None:
    from detector.batch.executors import check_address
    from detector.errors import InputError

    with pytest.raises(InputError, match="--dask"):
        check_address(address)


def test_a_scheduler_that_cannot_be_reached_is_refused_when_asked_to_reach_it() -> None:
    from detector.batch.executors import check_address
    from detector.errors import InputError

    check_address("tcp://127.0.0.1:9")  # the form is right
    with pytest.raises(InputError, match=r"could not reach the Dask scheduler at tcp://127\.0\.0\.1:9"):
        check_address("tcp://127.0.0.1:9", reach=True)
