"""Flow runs that start warm: `campaigns serve` forks each run from a process that has already imported
Prefect and the flows, instead of spawning a fresh interpreter that imports them again.

Prefect's runner starts a served flow's run with `run_flow_in_subprocess`, which asks `multiprocessing` for
a "spawn" context: every run pays a new interpreter and the import of Prefect, SQLAlchemy, Polars and the
flows (about 2 s on an idle machine, over 8 s on a busy one; bench/start.py). Python's "forkserver" context
does the import once, in a single-threaded server process started with `serve`, and forks each run from
it: the run is a copy of a warm process (its pages shared copy-on-write), started in milliseconds. The run
still gets its own environment and settings from Prefect (they travel with the pickled call, not through
the fork), and Prefect cancels it by its pid as before.

It needs the runner to hold each deployment's flow (serve.py registers them with `Runner.add_flow`): for a
deployment registered without it, Prefect starts `python -m prefect.engine` instead, which no context
changes. The switch is one indirection: `prefect.flow_engine` looks `multiprocessing.get_context` up at call time,
and is given a `multiprocessing` whose contexts are all the warm one (the smallest patch: replacing
`run_flow_in_subprocess`, which runner/_starter_direct.py names as the place to override, would copy its
~90 lines of Prefect internals).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import signal
from types import ModuleType
from typing import Any


class _WarmMultiprocessing(ModuleType):
    """`multiprocessing`, except that every context asked for is the forkserver one."""

    def __init__(self) -> None:
        super().__init__("multiprocessing")

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)

    @staticmethod
    def get_context(method: str | None = None) -> multiprocessing.context.BaseContext:
        return multiprocessing.get_context("forkserver")


def start_runs_warm(flows: list[Any]) -> None:
    """From now on, this process's served flow runs fork from a warm server, which is started (and imports
    the modules of `flows`) here, so that the first run is warm too."""
    import prefect.flow_engine

    multiprocessing.set_forkserver_preload(sorted({served.fn.__module__ for served in flows}))
    # Started with SIGINT ignored, the server and every run forked from it ignore the terminal's Ctrl-C from
    # their first instruction: `serve` stops its runs with SIGTERM (Prefect's intent), and a Ctrl-C landing
    # before a run's own code could ignore it would otherwise crash that run.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
    prefect.flow_engine.multiprocessing = _WarmMultiprocessing()  # type: ignore[attr-defined]
