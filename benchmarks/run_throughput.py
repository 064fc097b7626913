#!/usr/bin/env python
"""Whole-run throughput of the training harness on this machine: runs per hour, lever by lever.

Run from the repository root, alone on the machine (it sets its own thread counts per lever; do not
prefix it with ``OMP_NUM_THREADS=1``)::

    flock /tmp/cpu.lock .venv/bin/python benchmarks/run_throughput.py [--examples 640] [--runs-per-worker 2]

Workload: what a user runs.  Each lever is one grid (a temporary spec handed to
:func:`harness.grid.run_grid`) of the same configs: MRPC, all-MiniLM-L6-v2, LoRA r = 8 (random init) on
query/value, the ``quick`` preset shortened to the first ``--examples`` training examples, one epoch,
four evaluations of the full dev set (408 pairs) plus the step-0 one, adapter factors saved;
``--runs-per-worker`` runs per worker (seeds 0, 1, ...).  Runs per hour = runs / wall time of the whole
``run_grid`` call (start-up of kernels or worker processes included); "steady" runs per hour leave out a
pool's one-off start-up (each worker's first run), as a long grid does.

Levers (each against the round-1 baseline ``a``, and against the setting it changes):

    a  round 1: papermill executes notebooks/train.ipynb per run (a kernel per run), 1 worker × 2 threads, fp32
    b  executor "process": harness.train.run in the grid process, no kernel          (b vs a)
    c  + bf16 autocast                                                              (c vs b)
    d  process, 2 workers × 1 thread, fp32 (two runs at once; both count)            (d vs b)
    e  the combination: process + bf16 + 2 × 1                                       (e vs a)
    f  e + the int16 dropout mask (lora.Int16Dropout: nn.Dropout's distribution, a cheaper random
       stream; a numerics change whose equivalence has not been run, so not the grids' default)  (f vs e)

bf16 is first probed on a few real training steps (fp32 vs bf16 autocast, same threads).  A CPU without
native bf16 matmuls (no ``avx512_bf16``/``amx_bf16`` in /proc/cpuinfo: oneDNN then emulates them) can be
many times slower in bf16; the whole-run bf16 levers are then skipped (they would take that many times
longer) unless ``--force-bf16``, and the combination is the best precision found: fp32.

Also measured, in the same invocation:

* a profile of whole runs (levers b and c run in this process, so their functions are timed by
  wrapping harness.train's names): data read, model + tokenizer load, tokenisation, adapter init,
  evaluation, train-batch collation, factor saving, environment record, log write; the rest of
  ``run`` is the training steps (forward, backward, AdamW).  One more profiled run at 1 thread
  (each worker's setting in d/e) with ``--profile-1t``.
* step level, re-measured with benchmarks/lora_speed_memory.py's functions: our LoRA step over the
  rank-0 floor (no adapter, gradients forced to every q/v output), and ours over PEFT; the same with
  the int16 dropout mask (``ours_int16``).
* the weight-SVD inits (svd, svd_naive, lora_fa_svd, svd_seed, svd_minor, olora; random for reference):
  seconds of ``lora.add_lora`` on the model, as a fraction of one epoch of the full MRPC training set
  (estimated from the profile: steps per epoch × seconds per step + 4 evaluations).
* a projection to full-length runs (the quick preset's MRPC run: 345 steps, 13 evaluations), since the
  short benchmark runs carry per-run costs (kernel start-up, cold first runs, evaluation) in a larger
  share than real runs do; see :func:`project`.

Writes ``logs/benchmark_throughput.json`` atomically.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASE_THREADS = 2          # round 1: one process with 2 torch threads (the machine's 2 cores)


def set_environment() -> None:
    """The notebook kernels of lever a inherit this environment: round 1's 2 threads, offline, no bars."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(BASE_THREADS)
    for k, v in dict(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", GIT_OPTIONAL_LOCKS="0").items():
        os.environ.setdefault(k, v)


import torch  # noqa: E402

import lora  # noqa: E402
from harness.logs import read_log, write_json_atomic  # noqa: E402

MODEL = "bundled:all-MiniLM-L6-v2"
SVD_INITS = ("random", "svd", "svd_naive", "lora_fa_svd", "svd_seed", "svd_minor", "olora")
EVALS_PER_EPOCH = 4


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- levers
LEVERS = {
    "a": dict(name="baseline (round 1)", executor="notebook", workers=1, threads=2, precision="fp32",
              what="papermill kernel per run, 1 worker × 2 threads, fp32", against=None),
    "b": dict(name="process executor", executor="process", workers=1, threads=2, precision="fp32",
              what="harness.train.run in the grid process (no kernel), 1 × 2, fp32", against="a"),
    "c": dict(name="+ bf16", executor="process", workers=1, threads=2, precision="bf16",
              what="process, 1 × 2, bf16 autocast", against="b"),
    "d": dict(name="2 workers × 1 thread", executor="process", workers=2, threads=1, precision="fp32",
              what="process, 2 workers × 1 thread, fp32", against="b"),
    "e": dict(name="combination", executor="process", workers=2, threads=1, precision="bf16",
              what="process + bf16 + 2 × 1", against="a"),
    "f": dict(name="+ int16 dropout mask", executor="process", workers=2, threads=1, precision="bf16",
              dropout_mask="int16", what="process + bf16 + 2 × 1 + int16 dropout mask", against="e"),
}


# ----------------------------------------------------------------------------- profile
class Profile:
    """Time spent in harness.train's and harness.steps' functions during whole runs in this process (inclusive times;
    collate is counted only outside evaluation, which includes its own batches)."""

    SECTIONS = {"load_task_data": "data read", "load_model_and_tokenizer": "model + tokenizer load",
                "encode": "tokenisation", "add_lora": "adapter init", "evaluate": "evaluation (dev)",
                "collate": "train batch collation", "save": "factor saving",
                "environment": "environment record (git)", "write_json_atomic": "log write"}

    def __init__(self):
        self.seconds, self.calls = defaultdict(float), defaultdict(int)
        self.totals: list[float] = []
        self.steps: list[int] = []
        self._in = []
        self._saved = []

    def _wrap(self, key, fn, skip_inside=()):
        def timed(*args, **kwargs):
            if self._in and self._in[-1] in skip_inside:
                return fn(*args, **kwargs)
            self._in.append(key)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1
                self._in.pop()
        return timed

    def __enter__(self):
        import harness.steps as st
        import harness.train as tr
        targets = [(tr, n) for n in ("load_model_and_tokenizer", "encode", "evaluate", "collate")]
        targets += [(st, n) for n in ("load_task_data", "environment", "write_json_atomic")]
        targets += [(lora, "add_lora"), (lora, "save_lora"), (lora, "save_delta_svd"), (lora, "save_factors")]
        for mod, name in targets:
            orig = getattr(mod, name)
            key = "save" if name.startswith("save_") else name
            self._saved.append((mod, name, orig))
            setattr(mod, name, self._wrap(key, orig, skip_inside=("evaluate",) if name == "collate" else ()))
        run = tr.run

        def timed_run(*args, **kwargs):
            t0 = time.perf_counter()
            out = run(*args, **kwargs)
            self.totals.append(time.perf_counter() - t0)
            self.steps.append(out.get("steps", 0))
            return out
        self._saved.append((tr, "run", run))
        tr.run = timed_run
        return self

    def __exit__(self, *exc):
        for mod, name, orig in reversed(self._saved):
            setattr(mod, name, orig)
        self._saved.clear()

    def summary(self) -> dict:
        """Seconds per run in each section, the rest of ``run`` as the training steps, and fractions."""
        n = len(self.totals)
        if not n:
            return {}
        total = sum(self.totals) / n
        per_run = {self.SECTIONS[k]: v / n for k, v in self.seconds.items()}
        per_run["train steps (forward, backward, AdamW)"] = total - sum(per_run.values())
        evals = self.calls["evaluate"] / n
        steps = sum(self.steps) / n
        return {"runs": n, "run_s": total, "seconds": per_run,
                "fraction": {k: v / total for k, v in per_run.items()},
                "evals_per_run": evals, "steps_per_run": steps,
                "s_per_eval": per_run.get("evaluation (dev)", 0.0) / max(evals, 1),
                "s_per_step": (per_run["train steps (forward, backward, AdamW)"]
                               + per_run.get("train batch collation", 0.0)) / max(steps, 1)}


# ----------------------------------------------------------------------------- whole runs
def spec_for(key: str, args) -> dict:
    """The lever's grid: ``runs_per_worker`` runs for each worker (seeds 0, 1, ...), so that with several
    workers the second run of each worker shows a warm process as a long grid has."""
    lv = LEVERS[key]
    seeds = list(range(args.runs_per_worker * lv["workers"]))
    return dict(name=f"throughput_{key}", preset="quick", tasks=["mrpc"], methods=["random"], seeds=seeds,
                overrides=dict(max_train_examples=args.examples, epochs=1, evals_per_epoch=EVALS_PER_EPOCH,
                               precision=lv["precision"], rank=8, targets=["query", "value"],
                               dropout_mask=lv.get("dropout_mask", "torch")))


def run_lever(key: str, args, tmp: Path, profile: Profile | None = None) -> dict:
    from harness.grid import run_grid
    lv = LEVERS[key]
    out = tmp / key
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = run_grid(spec_for(key, args), args.data_dir, None, progress=False, out_dir=str(out),
                      workers=lv["workers"], executor=lv["executor"], threads=lv["threads"])
    wall = time.perf_counter() - t0
    logs = [read_log(out / f"{rid}.json") for rid in result]
    bad = [rid for rid, st in result.items() if st != "done"]
    if bad:
        raise SystemExit(f"lever {key}: runs not ok: {bad} ({[lg and lg.get('reason') for lg in logs]})")
    logs.sort(key=lambda lg: lg["finished_at"])
    run_walls = [lg["wall_time_s"] for lg in logs]
    n, w = len(logs), lv["workers"]
    # with several workers the first ``w`` runs to finish are each worker's first run (a fresh process:
    # imports, first-call set-up); the later ones are warm, as in a long grid
    warm = run_walls[w:] if w > 1 and n > w else run_walls
    rec = dict(**{k: v for k, v in lv.items()}, runs=n, grid_wall_s=wall,
               runs_per_hour=3600 * n / wall,
               run_wall_s=run_walls, run_wall_median_s=statistics.median(run_walls),
               run_wall_warm_mean_s=statistics.mean(warm),
               # what a run costs beyond harness.train.run: 1 worker: per run (kernel start, notebook, grid);
               # several: the one-off pool start-up (spawn + imports) and the tail, over the whole grid
               overhead_s=wall - sum(run_walls) / w,
               per_run_cost_s=wall / n,
               # a long grid: 1 worker: as measured; several: each worker busy with warm runs all the time
               steady_runs_per_hour=3600 * w / statistics.mean(warm) if w > 1 else 3600 * n / wall,
               final_accuracy={str(lg["config"]["seed"]): lg["final"]["accuracy"] for lg in logs},
               steps=logs[0]["steps"], evals=len(logs[0]["history"]["evals"]),
               env_threads=[lg["env"]["threads"] for lg in logs],
               load_avg_before=load0, load_avg_after=os.getloadavg()[0])
    if profile is not None:
        rec["profile"] = profile.summary()
    log(f"  [{key}] {lv['name']:22s} {n} runs in {wall:6.1f} s → {rec['runs_per_hour']:6.1f} runs/h "
        f"(steady {rec['steady_runs_per_hour']:.1f}); per run {rec['run_wall_median_s']:.1f} s, "
        f"overhead {rec['overhead_s']:.1f} s; acc {rec['final_accuracy']}")
    return rec


# ----------------------------------------------------------------------------- bf16 probe
def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return [f for f in line.split(":", 1)[1].split() if "bf16" in f or f.startswith(("amx", "avx512f"))]
    except OSError:
        pass
    return []


def bf16_probe(data_dir: str, threads: int, batch: int = 8, steps: int = 2) -> dict:
    """Seconds per training step (batch of ``batch`` real MRPC pairs, our LoRA) in fp32 and bf16 autocast."""
    from harness.data import load_task_data
    from harness.models import load_model_and_tokenizer
    from harness.tasks import get_task
    from harness.steps import autocast
    from harness.train import collate, encode
    torch.set_num_threads(threads)
    task = get_task("mrpc")
    splits, _ = load_task_data(task, data_dir)
    model, tok = load_model_and_tokenizer(MODEL, 2, 0)
    lora.add_lora(model, ["query", "value"], rank=8, alpha=16.0, dropout=0.1, init="random", seed=0,
                  keep_trainable=["classifier", "pooler"])
    rows = encode(tok, splits["train"][:batch], 128)
    b = collate(tok, rows)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    out = {}
    for prec in ("fp32", "bf16"):
        times = []
        for i in range(steps + 1):              # the first is a warm-up
            t0 = time.perf_counter()
            with autocast(prec, torch.device("cpu")):
                loss = model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - t0)
        out[prec] = statistics.median(times)
    return dict(batch=batch, tokens=int(b["attention_mask"].sum()), padded_len=int(b["input_ids"].shape[1]),
                threads=threads, step_s=out, bf16_over_fp32=out["bf16"] / out["fp32"],
                mkldnn_bf16_supported=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_flags=cpu_flags())


# ----------------------------------------------------------------------------- step level + inits
def speed_memory_module():
    spec = importlib.util.spec_from_file_location("lora_speed_memory", ROOT / "benchmarks" / "lora_speed_memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def step_ratios(threads: int, steps: int, warmup: int) -> dict:
    """Our LoRA step vs the rank-0 floor and vs PEFT (lora_speed_memory's models, batch, stepper)."""
    lsm = speed_memory_module()
    torch.set_num_threads(threads)
    batch = lsm.make_batch(lsm.base_model().config.vocab_size)
    models = {"ours_lora": lsm.ours(), "ours_int16": lsm.ours(dropout_mask="int16"), "peft_lora": lsm.peft_lora(),
              "floor_qv": lsm.backprop_floor()}
    times = lsm.time_steps({n: lsm.Stepper(m, batch) for n, m in models.items()}, steps, warmup)
    med = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    pairs = {"ours_over_floor": ("ours_lora", "floor_qv"), "ours_over_peft": ("ours_lora", "peft_lora"),
             "ours_int16_over_floor": ("ours_int16", "floor_qv"), "ours_int16_over_peft": ("ours_int16", "peft_lora")}
    return dict(threads=threads, steps=steps, warmup=warmup, batch=lsm.BATCH, seq_len=lsm.SEQ_LEN,
                median_ms=med, ratios={k: med[a] / med[b] for k, (a, b) in pairs.items()},
                ratios_paired_median={k: statistics.median(x / y for x, y in zip(times[a], times[b]))
                                      for k, (a, b) in pairs.items()})


def init_times(threads: int, repeats: int = 3) -> dict:
    """Median seconds of ``lora.add_lora`` (q/v, r = 8) per init on a fresh copy of the model."""
    lsm = speed_memory_module()
    torch.set_num_threads(threads)
    base = lsm.base_model()
    out = {}
    for init in SVD_INITS:
        ts = []
        for _ in range(repeats):
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            lora.add_lora(m, ["query", "value"], rank=8, alpha=16.0, dropout=0.1, init=init, seed=0,
                          keep_trainable=["classifier", "pooler"])
            ts.append(time.perf_counter() - t0)
            del m
        out[init] = statistics.median(ts)
    return out


def full_epoch_steps(data_dir: str, batch_size: int = 32) -> tuple[int, int]:
    from harness.data import load_task_data
    from harness.tasks import get_task
    splits, _ = load_task_data(get_task("mrpc"), data_dir)
    n = len(splits["train"])
    return n, math.ceil(n / batch_size)


# ----------------------------------------------------------------------------- projection
FIXED = ("data read", "model + tokenizer load", "tokenisation", "adapter init", "factor saving",
         "environment record (git)", "log write")


def run_model(p: dict, bench_examples: int) -> dict:
    """A profile as T(workload) = fixed + tokenisation·(examples) + s_step·steps + s_eval·evals."""
    sec = p["seconds"]
    tok_per_example = sec.get("tokenisation", 0.0) / (bench_examples + 408)
    fixed = sum(sec.get(k, 0.0) for k in FIXED if k != "tokenisation")
    return dict(fixed_s=fixed, tok_s_per_example=tok_per_example, s_per_step=p["s_per_step"], s_per_eval=p["s_per_eval"])


def predict(m: dict, wl: dict) -> float:
    return m["fixed_s"] + m["tok_s_per_example"] * wl["examples"] + m["s_per_step"] * wl["steps"] + m["s_per_eval"] * wl["evals"]


def project(levers: dict, profiles: dict, args, workloads: dict) -> dict:
    """Runs per hour of each lever on full-length runs, from the measured pieces:

    b (process, 1 × 2):  T_b = the 2-thread profile's fixed + per-step + per-eval times on the workload;
    a (notebook):        T_a = T_b + K, K = (grid wall of a − grid wall of b) / runs: kernel start-up, the
                         cold first run of a fresh process, the notebook (a cost per run, not per step);
    d (process, 2 × 1):  T_d = c · T_1t, T_1t from the 1-thread profile (one run alone) and
                         c = d's warm run time / the 1-thread profile's run time (two runs sharing the
                         machine); runs/h = 2 · 3600 / T_d (the pool's one-off start-up amortised).
    """
    m2 = run_model(profiles["process_fp32_2threads"], args.examples) if "process_fp32_2threads" in profiles else None
    m1 = run_model(profiles["process_fp32_1thread"], args.examples) if "process_fp32_1thread" in profiles else None
    a, b, d = (levers.get(k) if levers.get(k) and not levers[k].get("skipped") else None for k in "abd")
    if not (m2 and a and b):
        return {}
    K = (a["grid_wall_s"] - b["grid_wall_s"]) / a["runs"]
    c = d["run_wall_warm_mean_s"] / profiles["process_fp32_1thread"]["run_s"] if (d and m1) else None
    out = dict(K_notebook_s_per_run=K, contention_2x1=c, models={"2threads": m2, "1thread": m1}, workloads={})
    for name, wl in workloads.items():
        T_b = predict(m2, wl)
        row = dict(**wl, T_a_s=T_b + K, T_b_s=T_b, rph_a=3600 / (T_b + K), rph_b=3600 / T_b)
        if c:
            row.update(T_d_s=c * predict(m1, wl), rph_d=2 * 3600 / (c * predict(m1, wl)))
        row["ratio_b"] = row["rph_b"] / row["rph_a"]
        if c:
            row["ratio_d_vs_b"] = row["rph_d"] / row["rph_b"]
            row["ratio_combined"] = row["rph_d"] / row["rph_a"]
        out["workloads"][name] = row
    return out


def quick_workloads(args, n_train: int) -> dict:
    """The benchmark's own workload and the quick preset's full MRPC run (3 epochs, 4 dev evals/epoch)."""
    from harness.steps import eval_steps

    def workload(n: int, epochs: int) -> dict:
        spe = math.ceil(n / 32)
        return dict(examples=n + 408, steps=epochs * spe, evals=len(eval_steps(spe, epochs, EVALS_PER_EPOCH)))
    return {"benchmark": workload(args.examples, 1), "quick_mrpc": workload(n_train, 3)}


def quick_logged_wall(log_dir: Path = ROOT / "logs" / "quick") -> dict | None:
    """Median wall time of the round-1 grid's MRPC adapter runs (notebook, 1 × 2 threads, fp32, this machine)."""
    from harness.logs import read_logs
    walls = [lg["wall_time_s"] for lg in read_logs(log_dir)
             if lg["config"]["task"] == "mrpc" and lg["config"]["method"] != "full"]
    return dict(n=len(walls), median_s=statistics.median(walls), grid=str(log_dir.relative_to(ROOT))) if walls else None


# ----------------------------------------------------------------------------- main
def ratio_rows(levers: dict) -> dict:
    rows = {}
    for key, rec in levers.items():
        if rec.get("skipped"):
            continue
        base, prev = levers.get("a"), levers.get(LEVERS[key]["against"]) if LEVERS[key]["against"] else None
        row = {}
        if base and not base.get("skipped"):
            row["vs_baseline"] = rec["runs_per_hour"] / base["runs_per_hour"]
            row["vs_baseline_steady"] = rec["steady_runs_per_hour"] / base["steady_runs_per_hour"]
        if prev and not prev.get("skipped"):
            row["vs_" + LEVERS[key]["against"]] = rec["runs_per_hour"] / prev["runs_per_hour"]
            row["vs_" + LEVERS[key]["against"] + "_steady"] = rec["steady_runs_per_hour"] / prev["steady_runs_per_hour"]
        rows[key] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=640, help="MRPC training examples per run (one epoch)")
    ap.add_argument("--runs-per-worker", type=int, default=2, help="runs per worker in every lever (seeds 0, 1, ...)")
    ap.add_argument("--data-dir", default=os.environ.get("GLUE_DIR") or str((ROOT / ".." / "shared" / "glue").resolve()))
    ap.add_argument("--levers", default="abcdef", help="which levers to run (letters)")
    ap.add_argument("--force-bf16", action="store_true", help="run the bf16 levers even if the probe finds bf16 slower")
    ap.add_argument("--profile-1t", action=argparse.BooleanOptionalAction, default=True,
                    help="one more profiled run at 1 thread (a worker's setting in d/e)")
    ap.add_argument("--step-steps", type=int, default=8)
    ap.add_argument("--step-warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "logs" / "benchmark_throughput.json")
    args = ap.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    set_environment()
    torch.set_num_threads(BASE_THREADS)

    import transformers
    transformers.logging.set_verbosity_error()
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    from harness.steps import cpu_model
    log(f"torch {torch.__version__}, {cpu_model()} ({os.cpu_count()} cpus, capability "
        f"{torch.backends.cpu.get_cpu_capability()}, load avg {load_before[0]:.2f}); MRPC first {args.examples} "
        f"train examples, 1 epoch, {EVALS_PER_EPOCH} dev evals; {args.runs_per_worker} runs per worker")

    log("\n[0] bf16 probe (training steps, real MRPC batch)")
    probe = bf16_probe(args.data_dir, BASE_THREADS)
    log(f"  fp32 {probe['step_s']['fp32']:.3f} s/step, bf16 {probe['step_s']['bf16']:.3f} s/step → "
        f"bf16/fp32 {probe['bf16_over_fp32']:.2f} (oneDNN bf16 supported: {probe['mkldnn_bf16_supported']}; "
        f"flags {probe['cpu_flags'] or 'none of avx512f/avx512_bf16/amx'})")
    bf16_ok = probe["bf16_over_fp32"] < 1.0 or args.force_bf16

    log("\n[1] whole runs through run_grid, one grid per lever")
    levers, profiles = {}, {}
    with tempfile.TemporaryDirectory(prefix="throughput_") as tmp:
        tmp = Path(tmp)
        for key in args.levers:
            lv = LEVERS[key]
            if lv["precision"] == "bf16" and not bf16_ok:
                levers[key] = dict(**lv, skipped=f"bf16 is {probe['bf16_over_fp32']:.1f}× slower per training step "
                                                 f"than fp32 on this CPU (no native bf16 matmul)")
                log(f"  [{key}] {lv['name']:22s} skipped: {levers[key]['skipped']}")
                continue
            in_process = lv["executor"] == "process" and lv["workers"] == 1
            if in_process:
                with Profile() as prof:
                    levers[key] = run_lever(key, args, tmp, prof)
            else:
                levers[key] = run_lever(key, args, tmp)
        if args.profile_1t:
            log("\n  profiled run at 1 thread (a worker's setting), fp32, in this process")
            from harness.grid import run_grid
            spec = {**spec_for("d", args), "seeds": [0], "name": "throughput_profile_1t"}
            with Profile() as prof:
                run_grid(spec, args.data_dir, None, progress=False, out_dir=str(tmp / "p1"), workers=1,
                         executor="process", threads=1)
            profiles["process_fp32_1thread"] = prof.summary()
    torch.set_num_threads(BASE_THREADS)
    for key, rec in levers.items():
        if "profile" in rec:
            profiles[f"{rec['executor']}_{rec['precision']}_{rec['threads']}threads"] = rec["profile"]

    # the combination: e if it ran, else the best lever without the skipped one (d)
    ratios = ratio_rows(levers)
    ran = [k for k in levers if not levers[k].get("skipped")]
    combo_key = "e" if "e" in ran else ("d" if "d" in ran else None)
    combined = None
    if combo_key and "a" in ran:
        combined = dict(lever=combo_key, what=levers[combo_key]["what"], ratio=ratios[combo_key]["vs_baseline"],
                        ratio_steady=ratios[combo_key]["vs_baseline_steady"],
                        note=None if combo_key == "e" else "bf16 skipped (slower here): the combination is process + 2 × 1, fp32",
                        target=1.6, aim=2.0)
        combined["meets_target"] = combined["ratio"] >= 1.6

    log("\n  runs/hour and ratios (measured = whole grid wall incl. start-up; steady = long grid)")
    for key, rec in levers.items():
        if rec.get("skipped"):
            log(f"  {key} {rec['name']:22s} skipped")
            continue
        r = ratios[key]
        log(f"  {key} {rec['name']:22s} {rec['runs_per_hour']:6.1f} runs/h  " +
            "  ".join(f"{k} {v:.2f}" for k, v in r.items()))
    if combined:
        log(f"  combination ({combined['what']}): {combined['ratio']:.2f}× (steady {combined['ratio_steady']:.2f}×); "
            f"target 1.6× {'met' if combined['meets_target'] else 'MISSED'}")

    log("\n  profile of a whole run (seconds per run, share)")
    for name, p in profiles.items():
        log(f"   {name}: {p['run_s']:.1f} s per run, {p['steps_per_run']:.0f} steps, {p['evals_per_run']:.0f} evals")
        for sec, s in sorted(p["seconds"].items(), key=lambda kv: -kv[1]):
            log(f"     {sec:40s} {s:7.2f} s  {100 * p['fraction'][sec]:5.1f} %")

    log("\n[2] step level: our LoRA vs the rank-0 floor and vs PEFT (2 threads, fp32)")
    steps = step_ratios(BASE_THREADS, args.step_steps, args.step_warmup)
    log("  " + ", ".join(f"{k} {v:.0f} ms" for k, v in steps["median_ms"].items()) + "; " +
        ", ".join(f"{k} {v:.3f} (paired {steps['ratios_paired_median'][k]:.3f})" for k, v in steps["ratios"].items()))

    log("\n[3] weight-SVD inits: seconds of lora.add_lora (q/v, r 8, 2 threads) vs one full MRPC epoch")
    inits = init_times(BASE_THREADS)
    n_train, spe = full_epoch_steps(args.data_dir)
    epochs = {}
    for name, p in profiles.items():
        epochs[name] = spe * p["s_per_step"] + EVALS_PER_EPOCH * p["s_per_eval"]
    ref_name = "process_fp32_2threads" if "process_fp32_2threads" in epochs else next(iter(epochs), None)
    epoch_s = epochs.get(ref_name)
    init_rec = {k: dict(seconds=v, over_random_s=v - inits["random"],
                        fraction_of_epoch=v / epoch_s if epoch_s else None) for k, v in inits.items()}
    for k, v in init_rec.items():
        log(f"  {k:12s} {v['seconds']:.3f} s" + (f" = {100 * v['fraction_of_epoch']:.3f} % of an epoch"
                                                  if epoch_s else ""))
    if epoch_s:
        log(f"  (one epoch of full MRPC = {n_train} examples, {spe} steps + {EVALS_PER_EPOCH} evals ≈ {epoch_s:.0f} s "
            f"from the {ref_name} profile)")

    log("\n[4] projection to full-length runs (quick preset, MRPC: 3 epochs, 13 dev evals)")
    proj = project(levers, profiles, args, quick_workloads(args, n_train))
    logged = quick_logged_wall()
    if combined and "quick_mrpc" in proj.get("workloads", {}) and combo_key == "d":
        combined["projected_quick_mrpc"] = proj["workloads"]["quick_mrpc"].get("ratio_combined")
    for name, row in proj.get("workloads", {}).items():
        log(f"  {name:10s} {row['steps']} steps, {row['evals']} evals: T_a {row['T_a_s']:.0f} s, T_b {row['T_b_s']:.0f} s"
            + (f", T_d {row['T_d_s']:.0f} s (per run, 2 at once)" if 'T_d_s' in row else "")
            + f" → process {row['ratio_b']:.2f}×" + (f", 2 × 1 vs 1 × 2 {row['ratio_d_vs_b']:.2f}×, combined "
                                                     f"{row['ratio_combined']:.2f}×" if 'ratio_combined' in row else ""))
    if proj:
        log(f"  K (notebook extra per run) {proj['K_notebook_s_per_run']:.1f} s; 2 × 1 contention factor "
            f"{proj['contention_2x1'] or float('nan'):.2f}" + (f"; logged round-1 MRPC runs ({logged['grid']}, n = "
                                                             f"{logged['n']}): median {logged['median_s']:.0f} s"
                                                             if logged else ""))

    load_after = os.getloadavg()
    runtime = time.perf_counter() - t_start
    result = {
        "benchmark": "run_throughput",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workload": dict(task="mrpc", model=MODEL, method="random", rank=8, targets=["query", "value"],
                         preset="quick", max_train_examples=args.examples, epochs=1,
                         evals_per_epoch=EVALS_PER_EPOCH, dev_examples=408, runs_per_worker=args.runs_per_worker,
                         save_factors=True, data_dir=args.data_dir),
        "bf16_probe": probe,
        "levers": levers,
        "ratios": ratios,
        "combined": combined,
        "profiles": profiles,
        "projection": proj,
        "round1_logged_mrpc_wall": logged,
        "step_level": steps,
        "inits": dict(seconds=init_rec, epoch_s=epoch_s, epoch_from=ref_name, epoch_estimates_s=epochs,
                      full_mrpc_train=n_train, steps_per_epoch=spe, evals_per_epoch=EVALS_PER_EPOCH),
        "versions": dict(python=sys.version.split()[0], torch=torch.__version__, transformers=transformers.__version__),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_before_after": [load_before[0], load_after[0]],
        "runtime_s": runtime,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    log(f"\nwrote {args.out} in {runtime:.0f} s (load avg {load_before[0]:.2f} → {load_after[0]:.2f})")


if __name__ == "__main__":
    main()
