"""The one reader of the benchmark JSON files (``logs/benchmark_lora.json`` from
``benchmarks/lora_speed_memory.py``, ``logs/benchmark_throughput.json`` from ``benchmarks/run_throughput.py``),
and the flat key/value view of one that ``harness figures`` writes as a table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_benchmark(path: str | Path | None) -> dict | None:
    """The benchmark JSON at ``path`` as a dict; None when ``path`` is None, missing or not JSON."""
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def flatten(data: dict) -> list[dict]:
    """One row per leaf of the nested dict: key (dotted path), value (lists as JSON text), and for a
    list of numbers its length n and median."""
    rows = []

    def walk(prefix, obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, list) and obj and all(isinstance(v, (int, float)) for v in obj):
            rows.append(dict(key=prefix, value=json.dumps(obj), n=len(obj), median=float(np.median(obj))))
        else:
            rows.append(dict(key=prefix, value=obj if not isinstance(obj, list) else json.dumps(obj)))
    walk("", data)
    return rows
