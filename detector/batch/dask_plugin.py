"""A Dask worker plugin that runs a setup function in every worker, those that join later included.

Its own module because it imports ``distributed``, which only Dask runs need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class SetupEachWorker(WorkerPlugin):
    """Call ``setup_fn()`` once in each worker when it starts or when the plugin is registered."""

    def __init__(self, setup_fn: Callable[[], None]) -> None:
        self.setup_fn = setup_fn
        self.name = f"detector-setup-{setup_fn.__module__}.{setup_fn.__qualname__}"

    def setup(self, worker: Any) -> None:
        self.setup_fn()
