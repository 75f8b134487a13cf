"""Where per-site tasks run: local worker processes, or a Dask cluster (an existing one, or a LocalCluster).

Both take a function and an iterable of tasks and yield ``(task, result)`` as
tasks finish, in any order, with at most a few tasks per worker in flight, so
memory does not grow with the number of tasks.  A task whose worker died
yields the exception in place of a result; the function itself is expected
to return its own failures.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from detector.errors import InputError, first_line

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
IN_FLIGHT_PER_WORKER = 2


def local(fn: Callable[[T], R], tasks: Iterable[T], *, workers: int,
          initializer: Callable[[], None] | None = None) -> Generator[tuple[T, R | BaseException]]:
    """Run ``fn`` over ``tasks`` in ``workers`` spawned processes.

    When a worker dies (killed for memory, a crash in a C library) the pool
    is lost with every task in flight.  Which one killed it is unknown, so
    each of those runs again alone in a fresh process: the one that dies
    there yields the error, the others their results; then the rest go on.
    """
    source = iter(tasks)
    lost: list[T] = []
    while True:
        lost.clear()
        with _pool(workers, initializer) as pool:
            for task, result in _bounded(lambda task: _submit(pool, fn, task), source,
                                         workers * IN_FLIGHT_PER_WORKER, _wait_local, stop=lambda: bool(lost)):
                if isinstance(result, BrokenProcessPool):
                    lost.append(task)
                else:
                    yield task, result
        if not lost:
            return
        log.warning("a worker process died; the %d sites in flight run again one by one", len(lost))
        for task in list(lost):
            with _pool(1, initializer) as alone:
                yield task, _result(alone.submit(fn, task))


def _pool(workers: int, initializer: Callable[[], None] | None) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")  # no forked copies of threads or GDAL state
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer)


def _submit(pool: ProcessPoolExecutor, fn: Callable[[T], R], task: T) -> Future:
    """Submit, or when the pool broke before its failed futures were seen, a future that holds the break.

    The task is then among the lost ones and runs again alone, like those in flight.
    """
    try:
        return pool.submit(fn, task)
    except BrokenProcessPool as exc:
        lost: Future = Future()
        lost.set_exception(exc)
        return lost


def _wait_local(running: dict[Any, Any]) -> list[Any]:
    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
    return list(finished)


def dask(fn: Callable[[T], R], tasks: Iterable[T], *, address: str,
         initializer: Callable[[], None] | None = None) -> Generator[tuple[T, R | BaseException]]:
    """Run ``fn`` over ``tasks`` on a dask.distributed cluster.

    ``address`` is a scheduler (``tcp://host:8786``) or ``local:N``, which
    starts a LocalCluster of N single-threaded worker processes for the batch.
    """
    from distributed import Client, LocalCluster

    cluster = None
    if address.startswith("local:"):
        cluster = LocalCluster(n_workers=_local_workers(address), threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        client = _connect(Client, address)
    try:
        if initializer is not None:
            from detector.batch.dask_plugin import SetupEachWorker

            client.register_plugin(SetupEachWorker(initializer))  # workers that join later run it too
        workers = max(1, sum(client.nthreads().values()))
        yield from _bounded(lambda task: client.submit(fn, task, pure=False), iter(tasks),
                            workers * IN_FLIGHT_PER_WORKER, _wait_dask)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _wait_dask(running: dict[Any, Any]) -> list[Any]:
    from distributed import wait as dask_wait

    finished = dask_wait(list(running), return_when="FIRST_COMPLETED").done
    return list(finished)


def check_address(address: str, *, reach: bool = False) -> None:
    """Refuse a ``--dask`` value that is neither ``local:N`` nor an address a Dask client can take
    (``[tcp://]HOST:PORT``, ``tls://``, ``ws://``..., IPv6 in brackets), before any work starts; with ``reach``,
    also a scheduler that cannot be reached (the client connects once and closes)."""
    if address.startswith("local:"):
        _local_workers(address)
        return
    from distributed.comm import registry
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        _, port = parse_host_port(location)
        if scheme not in registry.backends or not 0 < int(port) < 65536:
            raise ValueError(f"scheme {scheme}:// of {sorted(registry.backends)}, port {port} of 1-65535")
    except ValueError as exc:
        raise InputError(f"--dask {address!r} is not a Dask address ({first_line(exc)}): give a scheduler "
                         "tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786), or local:N for a LocalCluster of N "
                         "workers") from None
    if reach:
        from distributed import Client

        _connect(Client, address).close()


def _local_workers(address: str) -> int:
    count = address.removeprefix("local:")
    if not count.isdecimal() or not count.isascii() or int(count) < 1:
        raise InputError(f"--dask {address}: give local:N with N >= 1 workers, or a scheduler tcp://host:8786")
    return int(count)


def _connect(client_type: Any, address: str) -> Any:
    try:
        return client_type(address, timeout="10s")
    except Exception as exc:  # distributed raises many kinds (OSError, TypeError for TLS...)
        raise InputError(f"could not reach the Dask scheduler at {address} ({first_line(exc)}): start it with "
                         "`dask scheduler` or give --dask local:N") from None


def _bounded(submit: Callable[[T], Any], tasks: Iterator[T], limit: int,
             wait_some: Callable[[dict[Any, T]], list[Any]],
             stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[T, Any]]:
    """Keep at most ``limit`` futures running; yield each finished one's task and result (or exception).

    Once ``stop()`` is true no task is submitted any more; the running ones are still yielded.
    """
    running: dict[Any, T] = {}
    for task in tasks:
        running[submit(task)] = task
        if len(running) >= limit:
            break
    while running:
        for future in wait_some(running):
            task = running.pop(future)
            yield task, _result(future)
            following = None if stop() else next(tasks, None)
            if following is not None:
                running[submit(following)] = following


def _result(future: Future | Any) -> Any:
    try:
        return future.result()
    except Exception as exc:
        return exc
