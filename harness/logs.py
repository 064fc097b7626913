"""Run logs on disk: atomic writes, validation, and reading a directory of logs."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

REQUIRED = ("run_id", "status", "config", "config_hash", "history", "final", "env", "data")


def _finite(obj):
    """JSON has no NaN: store non-finite floats as null (a metric can be NaN, e.g. a constant predictor)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_atomic(path: str | os.PathLike, write) -> Path:
    """The one atomic writer: ``write(tmp_path)`` fills a temporary file beside ``path`` (created with its
    parent directories), which is then fsynced and renamed over ``path``: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 1) -> Path:
    """``obj`` as JSON (non-finite floats as null), atomically (:func:`write_atomic`)."""
    text = json.dumps(_finite(obj), indent=indent, allow_nan=False)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def read_log(path: str | os.PathLike) -> dict | None:
    """A complete log, or None if the file is missing, unreadable or lacks a required field."""
    try:
        log = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(log, dict) or any(k not in log for k in REQUIRED):
        return None
    return log


def read_logs(log_dir: str | os.PathLike, status: str | None = "ok") -> list[dict]:
    """All valid logs in ``log_dir`` (optionally only those with ``status``), sorted by run id."""
    logs = [read_log(p) for p in sorted(Path(log_dir).glob("*.json"))]
    return [lg for lg in logs if lg is not None and (status is None or lg["status"] == status)]
