"""Shared helpers for the benchmarks: machine description, timing, JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import jax

    from rlbias_jax.runs import package_versions

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
        "packages": {k: v for k, v in package_versions().items() if v},
    }


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time over `repeats` calls (fn must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def write_json(name: str, data: dict) -> Path:
    from rlbias_jax.runs import atomic_write_json

    path = RESULTS / f"{name}.json"
    atomic_write_json(path, data)
    return path
