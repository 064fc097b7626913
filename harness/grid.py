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
import signal
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from .config import config_hash, make_config, run_id
from .logs import read_log, write_json_atomic
from .paths import resolve
from .lock import GridLock
from .tasks import UserError
from .validate import EXECUTORS, SPEC_KEYS, validate_spec

ROOT = Path(__file__).resolve().parent.parent
TRAIN_NOTEBOOK = ROOT / "notebooks" / "train.ipynb"


def load_spec(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"grid spec {str(p)!r} not found; specs live in configs/ (e.g. configs/quick.yaml)")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    spec = validate_spec(spec, p)      # a mapping of known keys, each of the right type (harness/validate.py)
    spec.setdefault("name", p.stem)
    return spec


def expand(spec: dict, out: Path | None = None) -> list[dict]:
    """All configs of a spec, in order, without duplicates.

    ``lr_from: <sweep spec>``: each (task, method) runs at the lr that :func:`harness.protocol.select_lr`
    picks from that sweep's logs (an error while the sweep is unfinished).  ``extend_lr_edges: n``: when
    a (task, method)'s best logged lr is the smallest or largest tried, the next rate on the 1-3 ladder
    beyond it is added (up to n per side), so the grid grows until each optimum is inside its range;
    this needs the logs in ``out``.
    """
    bad = sorted(set(spec) - SPEC_KEYS)
    if bad:
        raise UserError(f"unknown grid key(s) {', '.join(bad)}; valid: {', '.join(sorted(SPEC_KEYS))}")
    blocks = spec.get("blocks") or [{}]
    chooser = _lr_chooser(spec.get("lr_from")) if spec.get("lr_from") else None
    configs, seen = [], set()
    for block in blocks:
        s = {**{k: v for k, v in spec.items() if k != "blocks"}, **block}
        vary = s.get("vary") or {}
        keys = list(vary)
        for task, method, seed, *values in itertools.product(
                s.get("tasks", ["mrpc"]), s.get("methods", ["random"]), s.get("seeds", [0]),
                *[vary[k] for k in keys]):
            over = {**(s.get("overrides") or {}), **dict(zip(keys, values))}
            if chooser and "lr" not in over:
                over["lr"] = chooser(task, method)
            cfg = make_config(task, method, s.get("preset", "quick"), seed=seed, **over)
            h = config_hash(cfg)
            if h not in seen:
                seen.add(h)
                configs.append(cfg)
    if spec.get("extend_lr_edges") and out is not None:
        configs += [c for c in _edge_extensions(configs, out, spec["extend_lr_edges"]) if config_hash(c) not in seen]
    return configs


def _lr_chooser(sweep_path: str):
    """(task, method) → the lr selected on the validation split of the sweep at ``sweep_path``."""
    from .protocol import select_lr
    sweep = load_spec(resolve(sweep_path))
    sweep_out = grid_out_dir(sweep)
    todo = [c for c in expand(sweep, sweep_out) if run_status(c, sweep_out) == "todo"]
    if todo:
        raise UserError(f"the lr sweep {sweep_path} is not finished ({len(todo)} runs to do, e.g. {run_id(todo[0])}); "
                        f"run `python -m harness grid {sweep_path}` first")
    from .logs import read_logs
    logs = read_logs(sweep_out)
    return lambda task, method: select_lr(logs, task, method, where=sweep_path)


def _ladder(x: float, up: bool) -> float:
    """The next learning rate beyond ``x`` on the 1-3 ladder (…, 1e-4, 3e-4, 1e-3, 3e-3, …)."""
    import math
    e = math.floor(math.log10(x) + 1e-9)
    steps = sorted({m * 10.0 ** k for k in (e - 1, e, e + 1) for m in (1, 3)})
    nxt = [v for v in steps if (v > x * 1.01 if up else v < x / 1.01)]
    v = nxt[0] if up else nxt[-1]
    return float(f"{v:.0e}")


def _edge_extensions(configs: list[dict], out: Path, limit: int) -> list[dict]:
    """Configs that extend each lr series (same config but for lr) past an edge that holds its best
    validation score, one ladder step at a time, at most ``limit`` steps per side."""
    from .protocol import select_lr_from_scores, val_score
    groups: dict[str, list[dict]] = {}
    for c in configs:
        groups.setdefault(config_hash({k: v for k, v in c.items() if k != "lr"}), []).append(c)
    extra = []
    for cs in groups.values():
        if len(cs) < 2:
            continue
        template, lrs, added = cs[0], sorted({c["lr"] for c in cs}), {True: 0, False: 0}
        while True:
            logs = [read_log(out / f"{run_id({**template, 'lr': lr})}.json") for lr in lrs]
            if any(lg is None or lg["status"] not in ("ok", "failed") for lg in logs):
                break                                   # decide once the whole series is logged
            best = select_lr_from_scores({lr: val_score(lg) for lr, lg in zip(lrs, logs)})
            up = best == lrs[-1]
            if best not in (lrs[0], lrs[-1]) or added[up] >= limit:
                break
            new = _ladder(lrs[-1] if up else lrs[0], up)
            added[up] += 1
            lrs = sorted([*lrs, new])
            extra.append({**template, "lr": new})
    return extra


def notebook_parameters(cfg: dict) -> dict:
    """What the train notebook needs to rebuild exactly ``cfg``: its parameters cell."""
    base = make_config(cfg["task"], cfg["method"], cfg["preset"], seed=cfg["seed"])
    overrides = {k: v for k, v in cfg.items() if k not in ("task", "method", "preset", "seed") and v != base[k]}
    return dict(task=cfg["task"], method=cfg["method"], preset=cfg["preset"], seed=cfg["seed"], overrides=overrides)


def run_status(cfg: dict, out: Path) -> str:
    """'done', 'failed' or 'todo' for one config in ``out`` (an interrupted run is 'todo' again)."""
    log = read_log(out / f"{run_id(cfg)}.json")
    if log is None or log["config_hash"] != config_hash(cfg) or log["status"] == "interrupted":
        return "todo"
    return "done" if log["status"] == "ok" else "failed"


def failure_log(cfg: dict, reason: str, wall: float, status: str = "failed") -> dict:
    return {"run_id": run_id(cfg), "status": status, "reason": reason, "config": cfg,
            "config_hash": config_hash(cfg), "history": {}, "final": None, "best": None, "env": {},
            "data": {}, "wall_time_s": round(wall, 2)}


def grid_out_dir(spec: dict, out_dir: str | None = None) -> Path:
    """Where a grid's logs go: ``out_dir`` if given, else the spec's ``out_dir``; a relative path is
    taken from the repository root (:func:`harness.paths.resolve`), whatever the current directory."""
    return resolve(out_dir or spec.get("out_dir") or f"logs/{spec['name']}")


class Interrupted(Exception):
    """SIGINT/SIGTERM reached the grid or a worker."""


_IN_RUN = False     # set while a worker executes a config


def _raise_interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _worker_signal(signum, frame):
    """In a worker: interrupt the run in flight (it records itself as interrupted); an idle worker just exits."""
    if _IN_RUN:
        raise Interrupted(signal.Signals(signum).name)
    os._exit(128 + signum)


def _execute(cfg: dict, out: str, data_dir: str | None, device: str | None, executor: str, kernel: str,
             options: dict, threads: int | None) -> str:
    """Run one config (in the grid process or a worker); return its status.  Never leaves a partial
    log: the run writes its log atomically, last; a failure gets a 'failed' log with its reason, an
    interrupt an 'interrupted' one (rerun by a plain ``grid`` call)."""
    global _IN_RUN
    out = Path(out)
    rid, t0 = run_id(cfg), time.time()
    _IN_RUN = True
    if threads:
        import torch
        torch.set_num_threads(threads)
    try:
        if executor == "process":
            from .train import run
            try:
                run(cfg, out, data_dir, device=device, progress=False, **options)
            except (KeyboardInterrupt, Interrupted):
                raise
            except Exception as e:  # the run failed; record why and go on
                write_json_atomic(out / f"{rid}.json", failure_log(cfg, f"{type(e).__name__}: {_last_line(e)}",
                                                                   time.time() - t0))
        else:
            _execute_notebook(cfg, out, data_dir, device, kernel, options, t0)
    except (KeyboardInterrupt, Interrupted) as e:
        log = read_log(out / f"{rid}.json")
        if log is None or log["config_hash"] != config_hash(cfg):
            write_json_atomic(out / f"{rid}.json", failure_log(cfg, f"interrupted ({e or 'SIGINT'})",
                                                               time.time() - t0, "interrupted"))
        return "interrupted"
    finally:
        _IN_RUN = False
    log = read_log(out / f"{rid}.json")
    return "done" if log and log["status"] == "ok" else "failed"


def _execute_notebook(cfg, out: Path, data_dir, device, kernel, options, t0) -> None:
    import papermill as pm
    rid = run_id(cfg)
    nb_tmp, nb = out / f".{rid}.tmp.ipynb", out / f"{rid}.ipynb"
    params = {**notebook_parameters(cfg), "data_dir": data_dir, "out_dir": str(out), "device": device,
              "run_options": options}
    try:
        pm.execute_notebook(str(TRAIN_NOTEBOOK), str(nb_tmp), parameters=params, kernel_name=kernel,
                            cwd=str(ROOT), progress_bar=False, log_output=False)
    except Exception as e:  # the run failed (or its kernel was interrupted); record why and go on
        if getattr(e, "ename", None) == "KeyboardInterrupt":
            raise Interrupted("SIGINT in the kernel") from None
        log = read_log(out / f"{rid}.json")
        if log is None or log["config_hash"] != config_hash(cfg):
            write_json_atomic(out / f"{rid}.json",
                              failure_log(cfg, f"{type(e).__name__}: {_last_line(e)}", time.time() - t0))
    finally:
        if nb_tmp.exists():
            os.replace(nb_tmp, nb)


def _worker_init(threads: int | None):
    signal.signal(signal.SIGTERM, _worker_signal)
    signal.signal(signal.SIGINT, _worker_signal)     # Ctrl-C reaches the whole process group
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def run_grid(spec: dict, data_dir: str | None = None, device: str | None = None, retry_failed: bool = False,
             kernel: str = "python3", progress: bool = True, out_dir: str | None = None,
             workers: int | None = None, executor: str | None = None, threads: int | None = None) -> dict[str, str]:
    """Run every config of ``spec`` that has no log yet; return {run_id: status}.

    ``workers`` runs that many configs at once, each in its own process with ``threads`` torch threads
    (default: the CPU count divided among the workers); the grid process alone decides what runs, so two
    workers never take the same config.  ``executor``: ``notebook`` (papermill executes
    notebooks/train.ipynb into ``<run_id>.ipynb``) or ``process`` (calls :func:`harness.train.run` in the
    worker: no kernel start-up, no executed notebook).  Both write the same log.  Spec keys ``workers``,
    ``executor``, ``save_factors``, ``compact_factors`` give the defaults.  A grid with ``extend_lr_edges``
    keeps expanding until no new config appears.
    """
    out = grid_out_dir(spec, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or os.environ.get("GLUE_DIR")   # the notebook runs in ROOT: pass an absolute path
    if data_dir:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    workers = int(workers or spec.get("workers") or 1)
    executor = executor or spec.get("executor") or "notebook"
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise UserError(f"workers {workers!r} must be ≥ 1")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    options = {"save_factors": bool(spec.get("save_factors", True)),
               "compact_factors": bool(spec.get("compact_factors", False))}
    result: dict[str, str] = {}
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with GridLock(out):
            for tmp in [*out.glob(".*.tmp"), *out.glob(".*.tmp.ipynb"), *out.glob("*.tmp")]:
                _salvage_or_remove(tmp, out)        # debris of a killed run: never a log (globs overlap)
            first = True
            while True:
                configs = expand(spec, out)
                status = {run_id(c): run_status(c, out) for c in configs}     # each log read once per pass
                for rid, st in status.items():
                    result.setdefault(rid, st)
                todo = [c for c in configs if status[run_id(c)] == "todo"
                        or (retry_failed and first and status[run_id(c)] == "failed")]
                if first or todo:
                    print(f"grid {spec['name']}: {len(configs)} runs, {len(configs) - len(todo)} already logged, "
                          f"{len(todo)} to run → {out}" + (f" ({workers} workers, {executor})" if workers > 1 else ""),
                          flush=True)
                if first and todo:
                    _warn_slow_bf16(todo, device)
                if not todo:
                    break
                first = False
                _run_todo(todo, out, data_dir, device, executor, kernel, options, workers, threads, progress, result)
    except (KeyboardInterrupt, Interrupted):
        left = sum(1 for c in expand(spec, out) if run_status(c, out) == "todo")
        raise UserError(f"interrupted: {left} runs left in {out}; run the same grid command again to resume") from None
    finally:
        signal.signal(signal.SIGTERM, old_term)
    return result


def _warn_slow_bf16(todo: list[dict], device: str | None) -> None:
    """One line when bf16 runs are about to train on a CPU without native bf16 matmuls: oneDNN then
    emulates them and a step is many times slower (measured 19x on an AVX2-only CPU; 0.64x of fp32 with
    avx512_bf16).  On a GPU fp32 is faster at this model size too (benchmarks in book/speed.md)."""
    if not any(c.get("precision") == "bf16" for c in todo):
        return
    import torch
    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu") \
            and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("warning: bf16 runs on a CPU without native bf16 (no avx512_bf16/amx): expect them to be many "
              "times slower than fp32; set precision: fp32 in the spec", flush=True)


def _run_todo(todo, out, data_dir, device, executor, kernel, options, workers, threads, progress, result):
    if workers > 1:     # longest first (more epochs), so the last runs to finish are short ones
        todo = sorted(todo, key=lambda c: -c["epochs"])
    bar = tqdm(total=len(todo), desc=f"grid {out.name}", disable=not progress, dynamic_ncols=True)
    if workers == 1:
        for cfg in todo:
            result[run_id(cfg)] = _execute(cfg, str(out), data_dir, device, executor, kernel, options, threads)
            tqdm.write(_summary(read_log(out / f"{run_id(cfg)}.json")))
            bar.update(1)
            if result[run_id(cfg)] == "interrupted":
                raise Interrupted("SIGINT")
        bar.close()
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_worker_init, initargs=(threads,))
    pending = {pool.submit(_execute, c, str(out), data_dir, device, executor, kernel, options, threads): c
               for c in todo}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                cfg = pending.pop(f)
                try:
                    result[run_id(cfg)] = f.result()
                except BrokenProcessPool:
                    raise UserError(f"a grid worker died (killed?) while running {run_id(cfg)}; finished runs are "
                                    f"logged, run the same grid command again to resume") from None
                tqdm.write(_summary(read_log(out / f"{run_id(cfg)}.json")))
                bar.update(1)
    finally:
        bar.close()
        if pending:                      # interrupted or a worker died: stop the runs in flight (their logs are
            for f in pending:            # written last, so nothing half-written stays; each records 'interrupted')
                f.cancel()
            for proc in list((pool._processes or {}).values()):
                if proc.is_alive():
                    proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


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
