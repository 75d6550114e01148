"""PNG charts for BENCHMARKS.md (docs/), where a picture says it faster than a table: the send rate second by
second against the number's cap, and a campaign's delivery funnel (sent, delivered, read) over time."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here, and none needed
import matplotlib.pyplot as plt  # noqa: E402


def send_rate(accepted: Sequence[float], cap: float, path: Path, title: str) -> Path:
    """Messages the provider accepted in each second of the run, with the cap and the rate the run sustained."""
    start = min(accepted)
    per = collections.Counter(int(t - start) for t in accepted)
    seconds = list(range(max(per) + 1))
    sustained = (len(accepted) - 1) / (max(accepted) - start) if len(accepted) > 1 else 0.0
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=110)
    ax.step(seconds, [per[s] for s in seconds], where="post", color="#2b6cb0", label="accepted in the second")
    ax.axhline(cap, color="#c53030", linestyle="--", label=f"the number's cap: {cap:,.0f} msg/s")
    ax.axhline(sustained, color="#2f855a", linestyle=":", label=f"sustained: {sustained:,.0f} msg/s")
    ax.set(xlabel="seconds since the first message", ylabel="messages a second", title=title)
    ax.set_ylim(0, cap * 1.25)
    ax.legend(loc="lower center", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def funnel(sent: Sequence[float], delivered: Sequence[float], read: Sequence[float], path: Path, title: str) -> Path:
    """How many recipients had reached each stage, second by second (from the statuses applied)."""
    start = min(sent)
    end = max([*sent, *delivered, *read])
    seconds = list(range(int(end - start) + 2))
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=110)
    # Sent is drawn wide and pale: delivered follows it within a second and would hide it.
    for times, label, colour, width in (
        (sent, "sent", "#2b6cb0", 6.0),
        (delivered, "delivered", "#2f855a", 1.8),
        (read, "read", "#b7791f", 1.8),
    ):
        per = collections.Counter(int(t - start) for t in times)
        total, curve = 0, []
        for s in seconds:
            total += per[s]
            curve.append(total)
        ax.plot(seconds, curve, label=f"{label}: {len(times):,}", color=colour, lw=width, alpha=0.4 if width > 2 else 1)
    ax.set(xlabel="seconds since the first send", ylabel="recipients", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
