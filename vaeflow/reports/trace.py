"""Chrome trace-event files (open in Perfetto or chrome://tracing) from stage spans."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def trace_events(spans: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Spans ``(stage, start, end[, pid[, batch]])`` in epoch seconds -> a trace-event document."""
    if not spans:
        return {"traceEvents": [], "displayTimeUnit": "ms"}
    origin = min(float(s[1]) for s in spans)
    events: list[dict[str, Any]] = []
    pids = set()
    for span in spans:
        stage, start, end = span[0], float(span[1]), float(span[2])
        pid = int(span[3]) if len(span) > 3 else os.getpid()
        pids.add(pid)
        event = {"name": stage, "cat": "vaeflow", "ph": "X", "ts": round((start - origin) * 1e6, 1),
                 "dur": round((end - start) * 1e6, 1), "pid": pid, "tid": pid}  # fmt: skip
        if len(span) > 4:
            event["args"] = {"batch": span[4]}
        events.append(event)
    for pid in sorted(pids):
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": pid, "args": {"name": f"process {pid}"}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(spans: Sequence[Sequence[Any]], path: Path) -> Path:
    path.write_text(json.dumps(trace_events(spans)))
    return path
