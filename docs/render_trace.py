"""Draw a dynapipeline trace file (Chrome trace-event JSON) as a PNG timeline with matplotlib.

    python docs/render_trace.py TRACE.json OUT.png

One row per track (a thread, or an extra track for runs that overlapped on a
thread), grouped by process; nested slices (pipeline > group > stage) stack
downwards within a row, and arrows go from a dispatch to the run in a worker.
This is how ``docs/sensor_trace.png`` is made from ``examples/sensor_monitoring.py``.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

COLORS = {"pipeline": "#4e79a7", "group": "#59a14f", "stream": "#76b7b2", "step": "#bab0ac", "stage": "#f28e2b"}


def render(trace: dict[str, Any], out: str) -> None:
    events = trace["traceEvents"]
    processes = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    by_track: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            by_track[(e["pid"], e["tid"])].append(e)
    order = sorted(by_track, key=lambda t: (processes.get(t[0], "").startswith("worker"), t[0],
                                            threads.get(t, "").split(" (concurrent")[0], t[1] >= 10**9, t[1]))
    rows: dict[tuple[int, int], float] = {}
    labels = []
    y = 0.0
    placed: list[tuple[dict[str, Any], float]] = []
    for track in order:
        spans = sorted(by_track[track], key=lambda e: (e["ts"], -e["dur"]))
        stack: list[float] = []
        depth_max = 0
        for e in spans:
            while stack and stack[-1] <= e["ts"]:
                stack.pop()
            placed.append((e, y + len(stack)))
            depth_max = max(depth_max, len(stack))
            stack.append(e["ts"] + e["dur"])
        rows[track] = y
        labels.append((y + depth_max / 2, f"{processes.get(track[0], track[0])} · {threads.get(track, track[1])}"))
        y += depth_max + 1.6
    fig, ax = plt.subplots(figsize=(15, 0.42 * y + 1.4), dpi=110)
    for e, row in placed:
        start, width = e["ts"] / 1e3, max(e["dur"] / 1e3, 0.15)
        ax.broken_barh([(start, width)], (row, 0.9), facecolors=COLORS.get(e["cat"], "#9c755f"),
                       edgecolors="white", linewidth=0.5)
        if width > 25:
            ax.text(start + width / 2, row + 0.45, e["name"], ha="center", va="center", fontsize=7, clip_on=True)
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    for f in (e for e in events if e["ph"] == "f"):
        s = starts.get(f["id"])
        if s is not None and (s["pid"], s["tid"]) in rows and (f["pid"], f["tid"]) in rows:
            ax.annotate("", xy=(f["ts"] / 1e3, rows[(f["pid"], f["tid"])] + 0.45),
                        xytext=(s["ts"] / 1e3, rows[(s["pid"], s["tid"])] + 0.45),
                        arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 0.7})
    ax.set_yticks([at + 0.45 for at, _ in labels], [label for _, label in labels], fontsize=8)
    ax.set_ylim(y, -0.6)
    ax.set_xlabel("ms since the tracer started")
    ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, list(COLORS), loc="lower right", fontsize=8, ncols=len(COLORS))
    ax.set_title("dynapipeline trace: " + ", ".join(sorted(set(processes.values()))), fontsize=10)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python docs/render_trace.py TRACE.json OUT.png")
    with open(sys.argv[1], encoding="utf-8") as file:
        render(json.load(file), sys.argv[2])
