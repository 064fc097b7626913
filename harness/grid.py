"""A resumable grid: expand a YAML spec into configs and run each through papermill.

Spec (``configs/*.yaml``)::

    name: quick
    preset: quick
    out_dir: logs/quick
    tasks: [mrpc, rte, cola]
    methods: [full, random, svd]
    seeds: [0, 1, 2]
    overrides: {epochs: 3}          # any config field, for every run
    vary: {lr: [1e-3, 2e-3]}        # optional: a product over config fields
    blocks:                         # optional: sub-grids that inherit and override the keys above
      - {tasks: [cola], vary: {lr: [1e-3, 4e-3]}}

Each run executes ``notebooks/train.ipynb`` into ``<out_dir>/<run_id>.ipynb``; the notebook writes
``<run_id>.json`` (atomically, last).  A run whose log exists with the same config hash is skipped,
so a killed grid resumes where it stopped.  A run that fails gets a log with status "failed" and
its reason, and the grid goes on.
"""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from .config import config_hash, make_config, run_id
from .logs import read_log, write_json_atomic
from .tasks import UserError

ROOT = Path(__file__).resolve().parent.parent
TRAIN_NOTEBOOK = ROOT / "notebooks" / "train.ipynb"
SPEC_KEYS = {"name", "preset", "out_dir", "tasks", "methods", "seeds", "overrides", "vary", "blocks", "description"}


def load_spec(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"grid spec {str(p)!r} not found; specs live in configs/ (e.g. configs/quick.yaml)")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    spec.setdefault("name", p.stem)
    return spec


def expand(spec: dict) -> list[dict]:
    """All configs of a spec, in order, without duplicates."""
    bad = sorted(set(spec) - SPEC_KEYS)
    if bad:
        raise UserError(f"unknown grid key(s) {', '.join(bad)}; valid: {', '.join(sorted(SPEC_KEYS))}")
    blocks = spec.get("blocks") or [{}]
    configs, seen = [], set()
    for block in blocks:
        s = {**{k: v for k, v in spec.items() if k != "blocks"}, **block}
        vary = s.get("vary") or {}
        keys = list(vary)
        for task, method, seed, *values in itertools.product(
                s.get("tasks", ["mrpc"]), s.get("methods", ["random"]), s.get("seeds", [0]),
                *[vary[k] for k in keys]):
            over = {**(s.get("overrides") or {}), **dict(zip(keys, values))}
            cfg = make_config(task, method, s.get("preset", "quick"), seed=seed, **over)
            h = config_hash(cfg)
            if h not in seen:
                seen.add(h)
                configs.append(cfg)
    return configs


def notebook_parameters(cfg: dict) -> dict:
    """What the train notebook needs to rebuild exactly ``cfg``: its parameters cell."""
    base = make_config(cfg["task"], cfg["method"], cfg["preset"], seed=cfg["seed"])
    overrides = {k: v for k, v in cfg.items() if k not in ("task", "method", "preset", "seed") and v != base[k]}
    return dict(task=cfg["task"], method=cfg["method"], preset=cfg["preset"], seed=cfg["seed"], overrides=overrides)


class GridLock:
    """One grid process per output directory (a second one would run the same configs twice)."""

    def __init__(self, out: Path):
        self.path = out / ".grid.lock"

    def __enter__(self):
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pid = int(self.path.read_text().strip() or 0)
            if pid and _alive(pid):
                raise UserError(f"another grid (pid {pid}) is running in {self.path.parent}; wait or kill it") from None
            self.path.unlink(missing_ok=True)     # stale: its process is gone
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_status(cfg: dict, out: Path) -> str:
    """'done', 'failed' or 'todo' for one config in ``out``."""
    log = read_log(out / f"{run_id(cfg)}.json")
    if log is None or log["config_hash"] != config_hash(cfg):
        return "todo"
    return "done" if log["status"] == "ok" else "failed"


def failure_log(cfg: dict, reason: str, wall: float) -> dict:
    return {"run_id": run_id(cfg), "status": "failed", "reason": reason, "config": cfg,
            "config_hash": config_hash(cfg), "history": {}, "final": None, "best": None, "env": {},
            "data": {}, "wall_time_s": round(wall, 2)}


def grid_out_dir(spec: dict, out_dir: str | None = None) -> Path:
    """Where a grid's logs go: ``out_dir`` if given, else the spec's (relative to the project root)."""
    return ROOT / (out_dir or spec.get("out_dir") or f"logs/{spec['name']}")


def run_grid(spec: dict, data_dir: str | None = None, device: str | None = None, retry_failed: bool = False,
             kernel: str = "python3", progress: bool = True, out_dir: str | None = None) -> dict[str, str]:
    """Run every config of ``spec`` that has no log yet; return {run_id: status}."""
    import papermill as pm

    out = grid_out_dir(spec, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or os.environ.get("GLUE_DIR")   # the notebook runs in ROOT: pass an absolute path
    if data_dir:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    configs = expand(spec)
    result = {}
    with GridLock(out):
        for tmp in [*out.glob(".*.tmp"), *out.glob(".*.tmp.ipynb"), *out.glob("*.tmp")]:
            _salvage_or_remove(tmp, out)        # debris of a killed run: never a log (globs overlap)
        todo = [c for c in configs if run_status(c, out) == "todo" or (retry_failed and run_status(c, out) == "failed")]
        for c in configs:
            result[run_id(c)] = run_status(c, out)
        print(f"grid {spec['name']}: {len(configs)} runs, {len(configs) - len(todo)} already logged, "
              f"{len(todo)} to run → {out}", flush=True)
        for cfg in tqdm(todo, desc=f"grid {spec['name']}", disable=not progress, dynamic_ncols=True):
            rid, t0 = run_id(cfg), time.time()
            nb_tmp, nb = out / f".{rid}.tmp.ipynb", out / f"{rid}.ipynb"
            params = {**notebook_parameters(cfg), "data_dir": data_dir, "out_dir": str(out), "device": device}
            try:
                pm.execute_notebook(str(TRAIN_NOTEBOOK), str(nb_tmp), parameters=params, kernel_name=kernel,
                                    cwd=str(ROOT), progress_bar=False, log_output=False)
            except Exception as e:  # the run failed; record why and go on
                log = read_log(out / f"{rid}.json")
                if log is None or log["config_hash"] != config_hash(cfg):
                    reason = f"{type(e).__name__}: {_last_line(e)}"
                    write_json_atomic(out / f"{rid}.json", failure_log(cfg, reason, time.time() - t0))
            finally:
                if nb_tmp.exists():
                    os.replace(nb_tmp, nb)
            log = read_log(out / f"{rid}.json")
            result[rid] = "done" if log and log["status"] == "ok" else "failed"
            tqdm.write(_summary(log))
    return result


def _salvage_or_remove(tmp: Path, out: Path) -> None:
    """Remove a killed run's temporary file, except the executed notebook of a run whose ok log was
    written before the kill (the grid was stopped between the log and the notebook's rename): that
    notebook is the run's record, so it is moved into place."""
    name = tmp.name
    if name.startswith(".") and name.endswith(".tmp.ipynb") and tmp.exists():
        rid = name[1:-len(".tmp.ipynb")]
        log, nb = read_log(out / f"{rid}.json"), out / f"{rid}.ipynb"
        if log is not None and log["status"] == "ok" and not nb.exists():
            os.replace(tmp, nb)
            print(f"kept the executed notebook of {rid} (stopped before its rename)", flush=True)
            return
    tmp.unlink(missing_ok=True)


def _last_line(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else repr(e))[:300]


def _summary(log: dict | None) -> str:
    if log is None:
        return "  (no log)"
    if log["status"] != "ok":
        return f"  {log['run_id']}: FAILED ({log.get('reason')})"
    m = log["task"]["main_metric"]
    return (f"  {log['run_id']}: {m} {log['final'][m]:.4f} (best {log['best'][m]:.4f}) "
            f"in {log['wall_time_s']:.0f} s")
