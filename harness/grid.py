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
its reason, and the grid goes on.  SIGINT or SIGTERM stops the grid: the runs in flight get an
"interrupted" log (rerun by a plain ``grid`` call) and the grid raises :class:`Interrupted`.
"""
from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from .config import config_hash, make_config, run_id
from .logs import CorruptLogs, read_log, write_json_atomic
from .lock import GridLock
from .paths import resolve
from .provenance import refuse_dirty
from .tasks import UserError
from .validate import EXECUTORS, SPEC_KEYS, load_spec  # noqa: F401  (load_spec: harness.grid's API too)

ROOT = Path(__file__).resolve().parent.parent
TRAIN_NOTEBOOK = ROOT / "notebooks" / "train.ipynb"


class SweepUnfinished(UserError):
    """A config of an ``lr_from`` grid whose (task, method) series in the sweep still has runs to do."""


def expand(spec: dict, out: Path | None = None, waiting: list | None = None) -> list[dict]:
    """All configs of a spec, in order, without duplicates.

    ``lr_from: <sweep spec>``: each (task, method) runs at the lr that :func:`harness.protocol.select_lr`
    picks from that sweep's logs.  A (task, method) whose sweep series is unfinished (edge extensions
    included) raises :class:`SweepUnfinished`, unless ``waiting`` is a list: its configs are then left out
    and appended there as ``(task, method, seed)``, so that the cells already selected can run while the
    sweep goes on.  ``extend_lr_edges: n``: when
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
                try:
                    over["lr"] = chooser(task, method)
                except SweepUnfinished:
                    if waiting is None:
                        raise
                    waiting.append((task, method, seed))
                    continue
            cfg = make_config(task, method, s.get("preset", "quick"), seed=seed, **over)
            h = config_hash(cfg)
            if h not in seen:
                seen.add(h)
                configs.append(cfg)
    if spec.get("extend_lr_edges") and out is not None:
        configs += [c for c in _edge_extensions(configs, out, spec["extend_lr_edges"]) if config_hash(c) not in seen]
    return configs


def _cells(waiting: list) -> str:
    """'cola random, mrpc svd': the (task, method) cells of :func:`expand`'s waiting configs, in order."""
    return ", ".join(f"{t} {m}" for t, m in dict.fromkeys((t, m) for t, m, _ in waiting))


def _lr_chooser(sweep_path: str):
    """(task, method) → the lr selected on the validation split of the sweep at ``sweep_path``;
    :class:`SweepUnfinished` while that (task, method)'s series there has runs to do."""
    from .logs import read_logs
    from .protocol import select_lr
    sweep = load_spec(resolve(sweep_path))
    sweep_out = grid_out_dir(sweep)
    todo: dict[tuple[str, str], dict] = {}
    for c in expand(sweep, sweep_out):
        if run_status(c, sweep_out) == "todo":
            todo.setdefault((c["task"], c["method"]), c)
    logs = read_logs(sweep_out) if sweep_out.is_dir() else []

    def choose(task: str, method: str) -> float:
        if (task, method) in todo:
            raise SweepUnfinished(f"the lr sweep {sweep_path} is not finished for {task} {method} "
                                  f"(e.g. {run_id(todo[task, method])} to do); run "
                                  f"`python -m harness grid {sweep_path}` first")
        return select_lr(logs, task, method, where=sweep_path)
    return choose


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
    """'done', 'failed', 'todo' or 'corrupt' for one config in ``out`` (an interrupted run is 'todo' again;
    'corrupt': its log exists but is not a well-formed run log, :func:`harness.logs.read_log`)."""
    try:
        log = read_log(out / f"{run_id(cfg)}.json")
    except CorruptLogs:
        return "corrupt"
    if log is None or log["config_hash"] != config_hash(cfg) or log["status"] == "interrupted":
        return "todo"
    return "done" if log["status"] == "ok" else "failed"


def grid_counts(spec: dict, out: Path) -> dict[str, int]:
    """How many of a spec's configs are 'done', 'failed', 'todo' and 'corrupt' in ``out`` (:func:`run_status`), and
    'waiting' for their lr sweep (:func:`expand`); a :class:`UserError` when the sweep cannot give a cell its lr."""
    waiting: list = []
    counts = {"done": 0, "failed": 0, "todo": 0, "corrupt": 0}
    for c in expand(spec, out, waiting):
        counts[run_status(c, out)] += 1
    return {**counts, "waiting": len(waiting)}


def failure_log(cfg: dict, reason: str, wall: float, status: str = "failed") -> dict:
    return {"run_id": run_id(cfg), "status": status, "reason": reason, "config": cfg,
            "config_hash": config_hash(cfg), "history": {}, "final": None, "best": None, "env": {},
            "data": {}, "wall_time_s": round(wall, 2)}


def grid_out_dir(spec: dict, out_dir: str | None = None) -> Path:
    """Where a grid's logs go: ``out_dir`` if given, else the spec's ``out_dir``; a relative path is
    taken from the repository root (:func:`harness.paths.resolve`), whatever the current directory."""
    return resolve(out_dir or spec.get("out_dir") or f"logs/{spec['name']}")


def check_kernel(kernel: str) -> None:
    """``kernel`` names an installed Jupyter kernel (the notebook executor starts one per run)."""
    from jupyter_client.kernelspec import KernelSpecManager
    names = sorted(KernelSpecManager().find_kernel_specs())
    if kernel not in names:
        raise UserError(f"unknown kernel {kernel[:80]!r}; valid here: {', '.join(names) or '(none installed)'}")


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the grid or a worker.  A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on its way (a run's failure handler, papermill's) takes it for a failed run.
    ``message``: what the grid left, for the command line."""

    def __init__(self, signum: int = signal.SIGINT, message: str = ""):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.message = int(signum), message

    def __reduce__(self):       # a worker may hand one to the grid process, pickled
        return Interrupted, (self.signum, self.message)


_IN_RUN = False             # set while a config executes in this process
_IN_WORKER = False          # set in a grid's pool worker (by _worker_init)
_SIGNALS: list[int] = []    # the stop signals this process received while a grid (or a worker's run) ran
KERNEL_KILL_S = 30.0        # how long a stopped notebook run keeps killing its kernel (one may still be starting)
STOP_GRACE_S = 40.0         # a stopped grid's workers have this long to log their runs as interrupted, then are
                            # killed: longer than KERNEL_KILL_S, so that no worker dies leaving its kernel behind


def _stop_signal(signum, frame):
    """SIGINT/SIGTERM while a grid runs: the first raises :class:`Interrupted` where the grid is; later ones
    are only noted, so that nothing cuts short the stop itself (logging the runs in flight, ending kernels
    and workers)."""
    _SIGNALS.append(signum)
    if len(_SIGNALS) == 1:
        raise Interrupted(signum)


def _note_signal(signum, frame):
    """SIGINT/SIGTERM while the grid process waits on its worker pool: noted only; the wait loop raises
    :class:`Interrupted` at its next poll.  Raised from the handler, it could land inside concurrent.futures'
    lock handling and leave a future's lock held, and the pool's shutdown would then wait forever."""
    _SIGNALS.append(signum)


@contextmanager
def _stop_signals(handler):
    """SIGTERM and SIGINT go to ``handler`` within the block; the previous handlers come back after.  Nothing
    outside the main thread, which alone can set handlers and receives the signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _worker_signal(signum, frame):
    """In a worker: interrupt the run in flight (it records itself as interrupted); an idle worker just exits."""
    if not _IN_RUN:
        os._exit(128 + signum)
    _stop_signal(signum, frame)


def _execute(cfg: dict, out: str, data_dir: str | None, device: str | None, executor: str, kernel: str,
             options: dict, threads: int | None) -> str:
    """Run one config (in the grid process or a worker); return its status.  Never leaves a partial
    log: the run writes its log atomically, last; a failure gets a 'failed' log with its reason, an
    interrupt an 'interrupted' one (rerun by a plain ``grid`` call)."""
    global _IN_RUN
    if _SIGNALS:        # a worker told to stop skips the configs queued for it (they stay todo)
        return "interrupted"
    out = Path(out)
    rid, t0 = run_id(cfg), time.time()
    try:
        _IN_RUN = True          # inside the try: a signal from here on is the run's, and the finally resets it
        if threads:
            import torch
            torch.set_num_threads(threads)
        if executor == "process":
            from .train import run
            try:
                run(cfg, out, data_dir, device=device, progress=False, **options)
            except Exception as e:  # the run failed; record why and go on
                write_json_atomic(out / f"{rid}.json", failure_log(cfg, f"{type(e).__name__}: {_last_line(e)}",
                                                                   time.time() - t0))
        else:
            _execute_notebook(cfg, out, data_dir, device, kernel, options, t0)
    except (KeyboardInterrupt, Interrupted) as e:
        if _own_log(cfg, out) is None:       # a run that wrote its log just before the signal keeps it
            write_json_atomic(out / f"{rid}.json", failure_log(cfg, f"interrupted ({e or 'SIGINT'})",
                                                               time.time() - t0, "interrupted"))
        if _IN_WORKER:      # leave the pool: back at its queue, a worker whose pool is broken waits there forever
            os._exit(128 + getattr(e, "signum", signal.SIGINT))
        return "interrupted"
    finally:
        _IN_RUN = False
    log = _own_log(cfg, out)
    return "done" if log and log["status"] == "ok" else "failed"


def _own_log(cfg: dict, out: Path) -> dict | None:
    """The log of ``cfg`` in ``out`` if it is there, well formed and of this config."""
    try:
        log = read_log(out / f"{run_id(cfg)}.json")
    except CorruptLogs:
        return None
    return log if log is not None and log["config_hash"] == config_hash(cfg) else None


def _execute_notebook(cfg, out: Path, data_dir, device, kernel, options, t0) -> None:
    """papermill executes notebooks/train.ipynb for ``cfg`` into ``<run_id>.ipynb``, in a thread: the calling
    thread keeps its signal handlers (nbclient replaces them in the main thread) and, on an interrupt, kills
    the run's kernel, waits for papermill to give up, and re-raises."""
    import papermill as pm
    from jupyter_client.manager import AsyncKernelManager
    rid = run_id(cfg)
    nb_tmp, nb = out / f".{rid}.tmp.ipynb", out / f"{rid}.ipynb"
    params = {**notebook_parameters(cfg), "data_dir": data_dir, "out_dir": str(out), "device": device,
              "run_options": options}
    kernels, outcome, finished = [], {}, threading.Event()

    class RecordedKernel(AsyncKernelManager):     # the run's kernel, for _kill_kernels
        def __init__(self, **kw):
            super().__init__(**kw)
            kernels.append(self)

    def execute():
        try:
            pm.execute_notebook(str(TRAIN_NOTEBOOK), str(nb_tmp), parameters=params, kernel_name=kernel,
                                cwd=str(ROOT), progress_bar=False, log_output=False,
                                kernel_manager_class=RecordedKernel)
        except BaseException as e:      # handed to the calling thread
            outcome["error"] = e
        finally:
            finished.set()

    # Waited for with an Event, not Thread.join: a signal that interrupts join() can leave the thread marked
    # as stopped while it runs (CPython before 3.13).
    try:
        threading.Thread(target=execute, name=f"papermill {rid}", daemon=True).start()
        while not finished.wait(0.5):
            pass
        e = outcome.get("error")
        if e is None:
            return
        if getattr(e, "ename", None) == "KeyboardInterrupt":   # the kernel itself was interrupted
            raise Interrupted(signal.SIGINT) from None
        if _own_log(cfg, out) is None:     # the run failed (or its kernel died); record why and go on
            write_json_atomic(out / f"{rid}.json",
                              failure_log(cfg, f"{type(e).__name__}: {_last_line(e)}", time.time() - t0))
    except (KeyboardInterrupt, Interrupted):
        _quiet_papermill()
        deadline = time.time() + KERNEL_KILL_S
        while not finished.is_set() and time.time() < deadline:     # a kernel may still be starting
            _kill_kernels(kernels)
            finished.wait(0.2)
        raise
    finally:
        if nb_tmp.exists() and finished.is_set():
            os.replace(nb_tmp, nb)


def _kill_kernels(kernels) -> None:
    """SIGKILL the process group of each started kernel (a kernel runs in a session of its own).  The run's log
    is written last and atomically, so a killed kernel leaves either the whole log or none."""
    for km in kernels:
        pid = getattr(getattr(km, "provisioner", None), "pid", None)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _quiet_papermill() -> None:
    """papermill and nbclient log the kernel's death as errors; after an interrupt that is expected."""
    import logging
    for name in ("papermill", "traitlets", "nbclient"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _worker_init(threads: int | None, gpu_slots=None):
    global _IN_WORKER
    _IN_WORKER = True
    # A worker's bars share no process: a thread lock spares the semaphore that tqdm's default lock would
    # create and that a stopped worker, exiting at once, would leak.
    tqdm.set_lock(threading.RLock())
    signal.signal(signal.SIGTERM, _worker_signal)
    signal.signal(signal.SIGINT, _worker_signal)     # Ctrl-C reaches the whole process group
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    if gpu_slots is not None:       # before anything touches CUDA in this (spawned) process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_slots.get()


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs); [] without CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpu_assignment(workers: int, gpus: list[str]) -> list[str] | None:
    """Worker i's GPU: ``gpus[i mod N]`` (several workers share a GPU when there are more workers than GPUs);
    None without GPUs."""
    return [gpus[i % len(gpus)] for i in range(workers)] if gpus else None


def _worker_pool(workers: int, threads: int | None, device: str | None):
    """The spawn process pool of a grid: ``threads`` torch threads per worker and, unless ``device`` pins the
    runs (cpu, cuda:K), one of the visible GPUs per worker (:func:`gpu_assignment`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    ctx = mp.get_context("spawn")
    slots = None
    if device in (None, "cuda"):
        gpus = gpu_assignment(workers, visible_gpus())
        if gpus:
            slots = ctx.Queue()
            for g in gpus:
                slots.put(g)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(threads, slots))


MAX_WORKERS = MAX_THREADS = 1024


def _count(name: str, value, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= hi:
        raise UserError(f"invalid {name} {str(value)[:40]}; valid: an integer from 1 to {hi}")
    return value


def run_grid(spec: dict, data_dir: str | None = None, device: str | None = None, retry_failed: bool = False,
             kernel: str = "python3", progress: bool = True, out_dir: str | None = None,
             workers: int | None = None, executor: str | None = None, threads: int | None = None,
             gpus_per_run: float | None = None, allow_dirty: bool = False) -> dict[str, str]:
    """Run every config of ``spec`` that has no log yet; return {run_id: status}.

    ``workers`` runs that many configs at once, each in its own process with ``threads`` torch threads
    (default: the CPU count divided among the workers); the grid process alone decides what runs, so two
    workers never take the same config.  ``executor``: ``notebook`` (papermill executes
    notebooks/train.ipynb into ``<run_id>.ipynb``), ``process`` (calls :func:`harness.train.run` in the
    worker: no kernel start-up, no executed notebook; with N GPUs visible, worker i gets GPU i mod N) or ``ray``
    (each config a Ray task, on the cluster at $RAY_ADDRESS or a local instance of ``workers`` × ``threads``
    CPUs: :func:`_run_todo_ray`).  All write the same log.  Spec keys ``workers``, ``executor``,
    ``gpus_per_run``, ``save_factors``, ``compact_factors`` give the defaults.  The run-side code must be
    committed (:func:`harness.provenance.refuse_dirty`) unless ``allow_dirty``.  A grid with ``extend_lr_edges``
    keeps expanding until no new config appears.

    Before the output directory is made, everything is checked: the options, the kernel, and the logs already
    there (a corrupt one: :class:`~harness.logs.CorruptLogs`).  A task's data is its runs' business: missing or
    malformed files give those runs a failed log, and the grid goes on.  SIGINT/SIGTERM
    log the runs in flight as interrupted and raise :class:`Interrupted` (its ``message`` says what is left).
    """
    out = grid_out_dir(spec, out_dir)
    workers, executor, threads, gpus_per_run = _grid_options(spec, workers, executor, threads, gpus_per_run, kernel)
    refuse_dirty(allow_dirty)
    data_dir = data_dir or os.environ.get("GLUE_DIR")   # the notebook runs in ROOT: pass an absolute path
    if data_dir:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    configs = expand(spec, out, [])
    _refuse_corrupt(configs, out)
    options = {"save_factors": bool(spec.get("save_factors", True)),
               "compact_factors": bool(spec.get("compact_factors", False))}
    result: dict[str, str] = {}
    _SIGNALS.clear()
    try:
        with _stop_signals(_stop_signal):
            try:
                out.mkdir(parents=True, exist_ok=True)
                with GridLock(out):
                    _run_passes(spec, out, data_dir, device, retry_failed, executor, kernel, options, workers,
                                threads, gpus_per_run, progress, result)
                if _SIGNALS:        # noted while the pool or Ray shut down after the last run: still a stop
                    raise Interrupted(_SIGNALS[0])
            except (KeyboardInterrupt, Interrupted) as e:
                raise Interrupted(getattr(e, "signum", signal.SIGINT),
                                  f"the runs in flight are logged as interrupted; {_runs_left(spec, out)} runs left "
                                  f"in {out}; run the same grid command again to resume") from None
    finally:
        _SIGNALS.clear()
    return result


def _runs_left(spec: dict, out: Path) -> str:
    """How many of a grid's configs are still to run (waiting cells included), for the stop message; '?' when the
    logs or the lr sweep cannot be read (the stop must still be reported as a stop)."""
    try:
        waiting: list = []
        todo = sum(1 for c in expand(spec, out, waiting) if run_status(c, out) in ("todo", "corrupt"))
        return str(todo + len(waiting))
    except (UserError, CorruptLogs, OSError):
        return "?"


def _run_passes(spec, out, data_dir, device, retry_failed, executor, kernel, options, workers, threads,
                gpus_per_run, progress, result) -> None:
    """The grid's work under its lock: expand, run what is todo, and expand again until an edge extension adds
    nothing; ``result`` gets each config's status."""
    for tmp in [*out.glob(".*.tmp"), *out.glob(".*.tmp.ipynb"), *out.glob("*.tmp")]:
        _salvage_or_remove(tmp, out)        # debris of a killed run: never a log (globs overlap)
    first = True
    while True:
        if _SIGNALS:                # noted while the previous pass's pool or Ray shut down
            raise Interrupted(_SIGNALS[0])
        waiting: list = []
        configs = expand(spec, out, waiting)
        status = {run_id(c): run_status(c, out) for c in configs}     # each log read once per pass
        _refuse_corrupt(configs, out, status)
        for rid, st in status.items():
            result.setdefault(rid, st)
        todo = [c for c in configs if status[run_id(c)] == "todo"
                or (retry_failed and first and status[run_id(c)] == "failed")]
        if first or todo:
            print(f"grid {spec['name']}: {len(configs)} runs, {len(configs) - len(todo)} already logged, "
                  f"{len(todo)} to run → {out}" + (f" ({workers} workers, {executor})" if workers > 1 else "")
                  + (f"; {len(waiting)} wait for their lr sweep ({_cells(waiting)})" if waiting else ""),
                  flush=True)
        if first and todo:
            _warn_slow_bf16(todo, device)
        if not todo:
            break
        first = False
        if executor == "ray":
            _run_todo_ray(todo, out, data_dir, device, options, workers, threads or 1, gpus_per_run,
                          progress, result)
        else:
            _run_todo(todo, out, data_dir, device, executor, kernel, options, workers, threads, progress,
                      result)
    for tmp in [*out.glob(".*.tmp"), *out.glob("*.tmp")]:
        _salvage_or_remove(tmp, out)        # of a run killed and retried elsewhere (Ray): never a log


def _grid_options(spec: dict, workers, executor, threads, gpus_per_run, kernel: str) -> tuple:
    """(workers, executor, threads, gpus_per_run): the arguments, else the spec's values, else the defaults,
    each checked (a UserError naming the bad value and the valid ones); the executor's needs checked too."""
    workers = _count("workers", spec.get("workers", 1) if workers is None else workers, MAX_WORKERS)
    executor = executor or spec.get("executor") or "notebook"
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {str(executor)[:80]!r}; valid: {', '.join(EXECUTORS)}")
    if threads is not None:
        _count("threads", threads, MAX_THREADS)
    elif workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
    gpus_per_run = float(spec.get("gpus_per_run", 0) if gpus_per_run is None else gpus_per_run)
    if not 0 <= gpus_per_run <= 64:
        raise UserError(f"invalid gpus_per_run {gpus_per_run:g}; valid: a number from 0 to 64 (0.25: four runs a GPU)")
    if executor == "notebook":
        check_kernel(kernel)
    elif executor == "ray":
        _check_ray()
    return workers, executor, threads, gpus_per_run


def _refuse_corrupt(configs: list[dict], out: Path, status: dict | None = None) -> None:
    """A CorruptLogs naming every config whose log in ``out`` is not a well-formed run log: the grid does not
    overwrite a file it cannot read (move it away, or restore it, and run again)."""
    problems = []
    for c in configs:
        if (status[run_id(c)] if status else run_status(c, out)) == "corrupt":
            try:
                read_log(out / f"{run_id(c)}.json")
            except CorruptLogs as e:
                problems += [f"{p}; move it away to rerun its config" for p in e.problems]
    if problems:
        raise CorruptLogs(problems)


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
        try:
            for cfg in todo:
                result[run_id(cfg)] = _execute(cfg, str(out), data_dir, device, executor, kernel, options, threads)
                tqdm.write(_summary(_own_log(cfg, out)))
                bar.update(1)
                if result[run_id(cfg)] == "interrupted":
                    raise Interrupted(_SIGNALS[0] if _SIGNALS else signal.SIGINT)
        finally:
            bar.close()         # ends the bar's line, so that what follows starts on its own
        return
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool
    # While the pool runs a signal is only noted and the wait loop raises it: raised from the handler, it could
    # land inside concurrent.futures (holding a future's lock) and the pool's shutdown would wait forever.
    with _stop_signals(_note_signal):
        pool, pending, procs = None, {}, []
        try:
            pool = _worker_pool(workers, threads, device)
            pending = {pool.submit(_execute, c, str(out), data_dir, device, executor, kernel, options, threads): c
                       for c in todo}
            procs = list((pool._processes or {}).values())   # a spawn pool starts them all at the first submit
            while pending:
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)   # a timeout: polls for signals
                if _SIGNALS:
                    raise Interrupted(_SIGNALS[0])
                for f in done:
                    cfg = pending.pop(f)
                    try:
                        result[run_id(cfg)] = f.result()
                    except BrokenProcessPool:
                        if _stopped_by_a_signal(procs):     # a signal to a worker alone stops the grid too
                            raise Interrupted(signal.SIGTERM) from None
                        raise UserError(f"a grid worker died (killed?) while running {run_id(cfg)}; finished runs are "
                                        f"logged, run the same grid command again to resume") from None
                    tqdm.write(_summary(_own_log(cfg, out)))
                    bar.update(1)
            if _SIGNALS:                    # came after the last poll: the grid must not go on to an edge extension
                raise Interrupted(_SIGNALS[0])
        except BaseException:               # interrupted or a worker died: stop the runs in flight, and every
            for f in pending:               # worker (one may be left in a state where the pool cannot end it)
                f.cancel()
            _stop_workers(procs)
            raise
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


STOP_EXIT_CODES = {128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT}


def _stopped_by_a_signal(procs: list) -> bool:
    """Whether a broken pool's workers ended on a stop signal (a worker told to stop logs its run, then exits
    128 + signum; one signalled before its handlers were set dies of it): some did, and none ended otherwise
    (a SIGKILL, the OOM killer, a crash).  An exit code is read once settled: the pool's own thread may be
    reaping the same process, and the reader that loses that race sees None for a moment."""
    from multiprocessing.connection import wait as ready
    codes = []
    for p in procs:
        dead = bool(ready([p.sentinel], timeout=0.1))
        code, deadline = p.exitcode, time.time() + 2
        while code is None and dead and time.time() < deadline:
            time.sleep(0.02)
            code = p.exitcode
        codes.append(code)
    return any(c in STOP_EXIT_CODES for c in codes) and all(c is None or c in STOP_EXIT_CODES for c in codes)


def _stop_workers(procs: list) -> None:
    """SIGTERM each live worker (one in a run logs it as interrupted and exits; an idle one exits), wait up to
    STOP_GRACE_S for them all, then SIGKILL the rest.  A run writes its log last and atomically, so a killed worker
    leaves its config todo, never half a log; and with every worker gone the pool's shutdown has none to wait on."""
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    deadline = time.time() + STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join(5)


RAY_RETRIES = 2     # a run whose Ray worker dies (killed, node lost) is run again this many times, then logged failed


def _check_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError("executor 'ray' needs Ray: pip install 'ray>=2.40' (or the project's [ray] extra); "
                        "valid executors without it: notebook, process") from None


def _ray_execute(cfg: dict, out: str, data_dir: str | None, device: str | None, options: dict, threads: int) -> str:
    """One config in a Ray worker: :func:`_execute` with the process executor (its log written by the worker,
    atomically, into the shared output directory)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    return _execute(cfg, out, data_dir, device, "process", "", options, threads)


def _run_todo_ray(todo, out, data_dir, device, options, workers, threads, gpus_per_run, progress, result):
    """Each config a Ray task asking ``threads`` CPUs and ``gpus_per_run`` GPUs, in a fresh worker process (so a
    run's CUDA device and peak memory are its own); the driver (this process, which holds the grid's lock)
    decides what runs and waits.  The cluster: $RAY_ADDRESS if set (its workers get the driver's HF_*,
    TRANSFORMERS_* and HARNESS_* variables and commit), else a local instance of ``workers`` × ``threads`` CPUs
    and the visible GPUs, shut down at the end.  A task whose worker dies is retried (:data:`RAY_RETRIES`),
    then logged failed; an interrupt cancels the tasks, waits for them to end, and logs every config left
    without a log as interrupted.  Logs are written by the tasks: on several machines ``out`` must be on a
    shared filesystem."""
    import ray
    if device is not None and device.startswith("cuda") and (device != "cuda" or gpus_per_run == 0):
        raise UserError(f"device {device!r} with executor 'ray': Ray gives each run its GPU; valid: --gpus-per-run "
                        f"N (a fraction packs runs on a card) and no --device, or --device cpu")
    # As with the process pool, a signal is only noted and the wait loop raises it.  The block holds ray.init
    # too, so that the SIGTERM handler it installs goes with the block.
    with _stop_signals(_note_signal):
        try:
            started = _ray_start(ray, workers, threads, device)
        except SystemExit:      # Ray's own SIGTERM handler, live while ray.init starts the node
            ray.shutdown()
            raise Interrupted(signal.SIGTERM) from None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _note_signal)     # ray.init installed its own
        try:
            _check_ray_resources(ray, threads, gpus_per_run)
            if gpus_per_run == 0:
                device = "cpu"          # a task without a GPU reservation must not take one
            task = ray.remote(num_cpus=threads, num_gpus=gpus_per_run, max_retries=RAY_RETRIES, retry_exceptions=False,
                              max_calls=1)(_ray_execute)
            todo = sorted(todo, key=lambda c: -c["epochs"])      # longest first, as the process pool does
            pending = {task.options(name=run_id(c)).remote(c, str(out), data_dir, device, options, threads): c
                       for c in todo}
            bar = tqdm(total=len(todo), desc=f"grid {out.name} (ray)", disable=not progress, dynamic_ncols=True)
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)   # a timeout: polls for signals
                    if _SIGNALS:
                        raise Interrupted(_SIGNALS[0])
                    for ref in done:
                        cfg = pending.pop(ref)
                        try:
                            result[run_id(cfg)] = ray.get(ref)
                        except ray.exceptions.RayError as e:     # its worker died RAY_RETRIES + 1 times, or Ray failed
                            if _own_log(cfg, out) is None:
                                write_json_atomic(out / f"{run_id(cfg)}.json", failure_log(
                                    cfg, f"Ray: {type(e).__name__}: {_last_line(e)}", 0.0))
                            result[run_id(cfg)] = "failed"
                        tqdm.write(_summary(_own_log(cfg, out)))
                        bar.update(1)
                if _SIGNALS:                # came after the last poll: the grid must not go on to an edge extension
                    raise Interrupted(_SIGNALS[0])
            except (KeyboardInterrupt, Interrupted):
                for ref in pending:
                    ray.cancel(ref, force=True)
                ray.wait(list(pending), num_returns=len(pending), timeout=15)   # let the killed tasks end
                for cfg in pending.values():     # a task may have written its log just before the cancel: kept
                    if _own_log(cfg, out) is None:
                        write_json_atomic(out / f"{run_id(cfg)}.json", failure_log(
                            cfg, "interrupted (Ray task cancelled)", 0.0, "interrupted"))
                raise
            finally:
                bar.close()
        finally:
            if started:
                ray.shutdown()


def _ray_start(ray, workers: int, threads: int, device: str | None) -> bool:
    """Connect to $RAY_ADDRESS (its workers get the driver's HF_*, TRANSFORMERS_* and HARNESS_* variables and
    commit) or start a local instance of ``workers`` × ``threads`` CPUs and the visible GPUs; True if started
    here (so shut down at the end).  Nothing when Ray is already initialised."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        from .provenance import code_state
        code = code_state()
        env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "HARNESS_"))}
        env.update(HARNESS_GIT_COMMIT=code["git_commit"] or "", HARNESS_GIT_DIRTY="1" if code["git_dirty"] else "0")
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": env})
        return False
    ray.init(num_cpus=workers * threads, num_gpus=len(visible_gpus()) if device != "cpu" else 0,
             include_dashboard=False, log_to_driver=False, configure_logging=False, object_store_memory=100 * 2**20)
    return True


def _check_ray_resources(ray, threads: int, gpus_per_run: float) -> None:
    """A UserError when no node of the cluster can run a task of ``threads`` CPUs and ``gpus_per_run`` GPUs (Ray
    would queue it for ever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= threads and r.get("GPU", 0) >= gpus_per_run for r in nodes):
        most = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise UserError(f"no Ray node has {threads} CPUs and {gpus_per_run:g} GPUs for a run (the largest: "
                        f"{most.get('CPU', 0):g} CPUs, {most.get('GPU', 0):g} GPUs); valid: --threads and "
                        f"--gpus-per-run within one node's resources")


def _salvage_or_remove(tmp: Path, out: Path) -> None:
    """Remove a killed run's temporary file, except the executed notebook of a run whose ok log was
    written before the kill (the grid was stopped between the log and the notebook's rename): that
    notebook is the run's record, so it is moved into place."""
    name = tmp.name
    if name.startswith(".") and name.endswith(".tmp.ipynb") and tmp.exists():
        rid = name[1:-len(".tmp.ipynb")]
        try:
            log = read_log(out / f"{rid}.json")
        except CorruptLogs:
            log = None
        nb = out / f"{rid}.ipynb"
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
