"""What the processes of a benchmark use: memory (RSS, PSS: pages forked processes share counted once) and CPU
seconds, by process name, sampled every second over a process tree (from /proc)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _tree(pid: int) -> list[int]:
    """`pid` and every descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _name(pid: int) -> str:
    """A short name for the process: its command line's module or program."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if args[0].startswith(("postgres", "redis")):  # the server's processes, under one name
        return args[0].split(":")[0].split()[0].rsplit("/", 1)[-1]
    words = [a for a in args[1:] if a and not a.startswith("-")][:2] or args[:1]
    return " ".join(w.rsplit("/", 1)[-1] for w in words)[:40]


def _memory(pid: int) -> tuple[float, float] | None:
    """(RSS, PSS) of one process in MiB, None once it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        return None
    return rss / 1024, pss / 1024


def _cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds each process has used since it started."""
    tick = os.sysconf("SC_CLK_TCK")
    by: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        by[pid] = (int(fields[11]) + int(fields[12])) / tick
    return by


class MemoryPeak(threading.Thread):
    """Samples the memory and CPU of the processes `roots()` returns (with their descendants) every second.
    CPU is what each used while sampled: a process seen at the first sample counts from there, one that
    started later from its start."""

    def __init__(self, roots: object) -> None:
        super().__init__(daemon=True)
        self.roots, self.stop = roots, threading.Event()
        self.peak: tuple[float, float, dict[str, float]] = (0.0, 0.0, {})
        self.rss_peak: dict[str, float] = {}  # each process's own peak RSS (MiB), by name
        self.cpu: dict[str, float] = {}
        self._base: dict[int, float] | None = None
        self._used: dict[int, tuple[str, float]] = {}  # every process seen: its name and CPU used while seen

    def run(self) -> None:
        while not self.stop.wait(1.0):
            pids = [p for root in self.roots() for p in _tree(root)]  # type: ignore[operator]
            names = {pid: _name(pid) for pid in pids}
            memory = {pid: m for pid in pids if (m := _memory(pid))}
            pss_by: dict[str, float] = {}
            for pid, (rss, pss) in memory.items():
                pss_by[names[pid]] = pss_by.get(names[pid], 0.0) + pss
                self.rss_peak[names[pid]] = max(self.rss_peak.get(names[pid], 0.0), rss)
            total_pss = sum(pss for _, pss in memory.values())
            if total_pss > self.peak[1]:
                self.peak = (sum(rss for rss, _ in memory.values()), total_pss, pss_by)
            now = _cpu(pids)
            if self._base is None:
                self._base = now
            for pid, seconds in now.items():
                self._used[pid] = (names[pid], seconds - self._base.get(pid, 0.0))
            totals: dict[str, float] = {}
            for name, seconds in self._used.values():
                totals[name] = totals.get(name, 0.0) + seconds
            self.cpu = totals


def top(by: object) -> str:
    return ", ".join(f"{name} {value:.0f}" for name, value in sorted(by.items(), key=lambda kv: -kv[1])[:8])  # type: ignore[attr-defined]
