"""Benchmark reports: the machine they ran on and their section of ``docs/benchmarks.md``."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import shlex
import statistics
import time
from pathlib import Path

import torch


def machine() -> str:
    """CPU model, cores, torch threads and, when present, the GPU."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} cores available, {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def today() -> str:
    return datetime.date.today().isoformat()


def write_section(path: str | Path, heading: str, text: str) -> None:
    """Replace the ``heading`` section of a Markdown file (or append it), leaving the others."""
    path = Path(path)
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    start = doc.find(heading + "\n")
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        end = doc.find("\n## ", start + len(heading))
        doc = doc[:start] + text.rstrip("\n") + "\n" + (doc[end:] if end >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc.rstrip("\n") + "\n")


def benchmark_section(heading: str, script: str, argv: list[str], started: float,
                      description: str, table: str) -> str:
    """A benchmark's Markdown section: what was measured, the command, machine, date, table."""
    command = f"python {script} {shlex.join(argv)}".strip()
    return (f"{heading}\n\n{description}\n\n- command: `{command}`\n- machine: {machine()}\n"
            f"- date: {today()}, wall time {(time.time() - started) / 60:.0f} min\n\n{table}\n")


def update_json(path: str | Path, updates: dict) -> dict:
    """Merge ``updates`` into a JSON results file, dictionaries recursively (a benchmark run
    replaces only its own entries), and return the whole file. Atomic, and serialised by a lock
    file so benchmark processes running side by side can share one results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        _merge(data, updates)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(partial, path)
    return data


def _merge(into: dict, updates: dict) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def mean_sd(values: list[float]) -> str:
    """``"mean ± sd (v1, v2, ...)"`` of per-seed values (sd 0 for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return (f"{statistics.mean(values):.1f} ± {spread:.1f} "
            f"({', '.join(f'{v:.1f}' for v in values)})")
