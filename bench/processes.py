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


def _memory(pids: list[int]) -> tuple[float, float, dict[str, float]]:
    """(RSS, PSS) in MiB summed over `pids`, and the PSS by process name."""
    rss = pss = 0
    by: dict[str, float] = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    kib = int(line.split()[1])
                    pss += kib
                    name = _name(pid)
                    by[name] = by.get(name, 0) + kib / 1024
        except OSError:
            continue
    return rss / 1024, pss / 1024, by


def _rss(pids: list[int]) -> dict[str, float]:
    """RSS in MiB by process name (the largest process of a name)."""
    by: dict[str, float] = {}
    for pid in pids:
        try:
            kib = next(
                int(line.split()[1])
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        except (OSError, StopIteration):
            continue
        by[_name(pid)] = max(by.get(_name(pid), 0.0), kib / 1024)
    return by


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
            rss, pss, by = _memory(pids)
            if pss > self.peak[1]:
                self.peak = (rss, pss, by)
            for name, mib in _rss(pids).items():
                self.rss_peak[name] = max(self.rss_peak.get(name, 0.0), mib)
            now = _cpu(pids)
            if self._base is None:
                self._base = now
            for pid, seconds in now.items():
                self._used[pid] = (_name(pid), seconds - self._base.get(pid, 0.0))
            totals: dict[str, float] = {}
            for name, seconds in self._used.values():
                totals[name] = totals.get(name, 0.0) + seconds
            self.cpu = totals


def top(by: object) -> str:
    return ", ".join(f"{name} {value:.0f}" for name, value in sorted(by.items(), key=lambda kv: -kv[1])[:8])  # type: ignore[attr-defined]
