"""Run logs on disk: atomic writes, validation, and reading a directory of logs.

A run log is ``<run_id>.json`` (the id ends with the first 8 hex digits of the config hash), a JSON object
with the fields of :data:`REQUIRED`.  Readers never skip a file silently: a ``*.json`` that does not parse,
is not an object, or is named like a run log but is not a well-formed one raises :class:`CorruptLogs`, with
one line per file and the reason; so does any other JSON object in a directory of run logs (a foreign file).
A directory without run logs may hold other JSON documents (the planted-update logs, a capture); readers of
run logs pass over those.  ``python -m harness check`` (harness/check.py) verifies more: hashes, configs,
factor files and temporaries.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
from pathlib import Path

from .tasks import UserError

REQUIRED = ("run_id", "status", "config", "config_hash", "history", "final", "env", "data")
STATUSES = ("ok", "failed", "interrupted")
RUN_LOG_NAME = re.compile(r"-[0-9a-f]{8}\.json$")
MAX_LOG_BYTES = 64 << 20        # the largest committed log is ~0.1 MB


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")    # per process: two writers never share one
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


class CorruptLogs(UserError):
    """Files that should be run logs (or their factor files) and are not; ``problems``: one line per file,
    ``<path>: <reason>``."""

    def __init__(self, problems):
        self.problems = list(problems)
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"{self.problems[0]}{more}")


def load_json(path: str | os.PathLike) -> tuple[object, str | None]:
    """(the parsed file, None), or (None, why it is not JSON): unreadable, empty, too large, not UTF-8,
    truncated, malformed."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_LOG_BYTES + 1)
    except OSError as e:
        return None, f"cannot read it ({e.strerror or type(e).__name__})"
    if len(raw) > MAX_LOG_BYTES:
        return None, f"larger than {MAX_LOG_BYTES >> 20} MiB, not a log"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); a log is JSON"
    if not text.strip():
        return None, "empty file"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"):   # the text ends inside
            return None, f"truncated JSON (the text ends at line {e.lineno} before the document does)"
        return None, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    except (ValueError, RecursionError) as e:
        return None, f"not valid JSON ({type(e).__name__})"


def is_run_log(name: str, obj) -> bool:
    """Whether a file ``name`` holding ``obj`` is meant as a run log: named like one, or an object with a run_id."""
    return bool(RUN_LOG_NAME.search(name)) or (isinstance(obj, dict) and "run_id" in obj)


def _number(x) -> bool:
    return x is None or (isinstance(x, numbers.Real) and not isinstance(x, bool))


def _metrics(x, depth: int = 0) -> bool:
    """A mapping of metric → number or null, or of such mappings (``val``), two levels at most."""
    return isinstance(x, dict) and all(_number(v) or (depth < 1 and _metrics(v, depth + 1)) for v in x.values())


def run_log_problem(log) -> str | None:
    """Why ``log`` is not a well-formed run log, or None: the fields of :data:`REQUIRED`, the types of those
    that readers use, a known status, and the history's shape (evaluations: objects with an integer step and
    metrics; the training loss: numbers).  Whether its hash, id and file name agree: ``harness check``."""
    if not isinstance(log, dict):
        return f"not a run log: a JSON {type(log).__name__}, not an object"
    missing = [k for k in REQUIRED if k not in log]
    if missing:
        return f"not a run log: no {', '.join(missing)}"
    if not isinstance(log["run_id"], str):
        return f"run_id is a {type(log['run_id']).__name__}, not a string"
    if log["status"] not in STATUSES:
        return f"status {str(log['status'])[:40]!r} is not one of {', '.join(STATUSES)}"
    for key, kind in (("config", dict), ("history", dict), ("env", dict), ("data", dict)):
        if not isinstance(log[key], kind):
            return f"{key} is a {type(log[key]).__name__}, not a {kind.__name__}"
    for key in ("final", "best"):
        if log.get(key) is not None and not _metrics(log[key]):
            return f"{key} is not a mapping of metric → number"
    h = log["history"]
    evals, losses = h.get("evals", []), h.get("train_loss", [])
    if not isinstance(evals, list) or not all(isinstance(e, dict) and _metrics(e) for e in evals):
        return "history.evals is not a list of evaluations (metric → number)"
    if not all(isinstance(e.get("step"), int) and not isinstance(e.get("step"), bool) for e in evals):
        return "history.evals has an evaluation without an integer step"
    if not isinstance(losses, list) or not all(_number(x) for x in losses):
        return "history.train_loss is not a list of numbers"
    return None


def complete_run_problem(log: dict) -> str | None:
    """For a well-formed run log whose status is ok: why figures could not be drawn from it, or None.  It
    names its task's main metric, has evaluations with that metric, and a final evaluation."""
    if log["status"] != "ok":
        return None
    task, cfg = log.get("task"), log["config"]
    main = task.get("main_metric") if isinstance(task, dict) else None
    if not isinstance(main, str):
        return "an ok run without task.main_metric"
    for key, kind in (("task", str), ("method", str), ("seed", int), ("lr", numbers.Real)):
        if not isinstance(cfg.get(key), kind):
            return f"config.{key} is missing or not a {kind.__name__}"
    evals = log["history"].get("evals")
    if not evals or not all(main in e for e in evals):
        return f"an ok run whose history.evals lack its main metric {main!r}"
    if not isinstance(log["final"], dict) or main not in log["final"]:
        return f"an ok run whose final evaluation lacks {main!r}"
    return None


def factors_problem(log: dict, log_dir: str | os.PathLike) -> str | None:
    """Why the factor file an ok run log names (``factors_file``) cannot be read, or None: absent, or not a
    complete safetensors file (its header must cover the whole file)."""
    name = log.get("factors_file")
    if log["status"] != "ok" or name is None:
        return None
    if not isinstance(name, str) or name != f"{log['run_id']}.safetensors":
        return f"factors_file {str(name)[:80]!r} is not <run_id>.safetensors"
    path = Path(log_dir) / name
    if not path.is_file():
        return f"its factor file {name} is missing"
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            if not list(f.keys()):
                return f"its factor file {name} holds no tensors"
    except (SafetensorError, OSError, ValueError) as e:
        return f"its factor file {name} is not readable safetensors ({str(e).splitlines()[0][:120]})"
    return None


def read_log(path: str | os.PathLike) -> dict | None:
    """The run log at ``path``; None if there is no file, or if it is another kind of JSON document (a
    planted-update log).  A file that is not a well-formed run log raises :class:`CorruptLogs`."""
    p = Path(path)
    if not os.path.lexists(p):
        return None
    obj, why = load_json(p)
    if why is None and not is_run_log(p.name, obj):
        return None
    why = why or run_log_problem(obj)
    if why:
        raise CorruptLogs([f"{p}: {why}"])
    return obj


def scan_logs(log_dir: str | os.PathLike) -> tuple[list[tuple[Path, dict]], list[str]]:
    """((path, run log) for each run log of ``log_dir`` sorted by file name, one problem line per file that is
    not a run log but should be): every ``*.json`` that does not parse, every malformed run log, and in a
    directory that holds run logs every other JSON document (a foreign file)."""
    logs, problems, documents = [], [], []
    for p in sorted(Path(log_dir).glob("*.json")):
        obj, why = load_json(p)
        if why is None and not is_run_log(p.name, obj):
            documents.append(p)
            continue
        why = why or run_log_problem(obj)
        if why:
            problems.append(f"{p}: {why}")
        else:
            logs.append((p, obj))
    if logs:
        problems += [f"{p}: not a run log (no run_id) in a directory of run logs" for p in documents]
    return logs, sorted(problems)


def read_logs(log_dir: str | os.PathLike, status: str | None = "ok") -> list[dict]:
    """The run logs in ``log_dir`` (optionally only those with ``status``), sorted by run id; a file there
    that should be a run log and is not raises :class:`CorruptLogs` (:func:`scan_logs`)."""
    logs, problems = scan_logs(log_dir)
    if problems:
        raise CorruptLogs(problems)
    return [lg for _, lg in logs if status is None or lg["status"] == status]
