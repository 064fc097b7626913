"""``python -m harness figures``: every table and figure of every grid under ``logs/``, and the manifests.

All or nothing: every log and factor file is checked first (a problem refuses the build, one line per file),
then everything is drawn into a temporary directory beside the output, and each grid's directory replaces
the old one by a rename only when the whole build has succeeded."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..analysis.benchmark import flatten, load_benchmark
from ..analysis.runs import describe_runs, failed_runs, load_logs, runs_table, summary_table
from ..logs import CorruptLogs, complete_run_problem, factors_problem, scan_logs, write_json_atomic
from ..tasks import order_tasks
from .spectra import spectra_figures
from .style import display_entries, entry, in_notebook, merge_manifest, write_table
from .training import convergence_figure, differences_figure, lr_sweep_figure


def compare_figures(log_dir, fig_dir, show: bool | None = None) -> dict:
    """Tables and convergence figures for one log directory (what notebooks/compare.ipynb shows):

    ``runs_<dir>.csv``, ``failed_<dir>.csv``, ``summary_<dir>.csv/.json``, ``convergence_<task>.png``
    per task, and ``lr_sweep.png`` + ``lr_curves.png`` when a (task, method) has several learning
    rates.  Merges the entries into ``fig_dir/manifest.json`` and returns them."""
    name = Path(log_dir).resolve().name
    logs, all_logs = load_logs(log_dir), load_logs(log_dir, status=None)
    out = {}
    runs = runs_table(log_dir)
    failed = failed_runs(log_dir)
    summ = summary_table(log_dir)
    write_table(summ, fig_dir, f"summary_{name}")
    p = write_table(runs, fig_dir, f"runs_{name}", json_too=False)
    out[f"runs_{name}"] = entry(p, f"All ok runs, one row each. {describe_runs(log_dir, logs)}.", logs)
    failed_logs = [lg for lg in all_logs if lg["status"] != "ok"]
    p = write_table(failed, fig_dir, f"failed_{name}", json_too=False)
    out[f"failed_{name}"] = entry(p, f"{len(failed)} failed run(s) from {log_dir} (not plotted)"
                                      + (": " + ", ".join(failed["run_id"]) if len(failed) else "") + ".",
                                   failed_logs)
    out[f"summary_{name}"] = entry(Path(fig_dir) / f"summary_{name}.csv",
                                    f"Final dev metrics, mean ± sample std over seeds (n = runs with a finite "
                                    f"value). {describe_runs(log_dir, logs)}.", logs)
    for task in order_tasks(lg["config"]["task"] for lg in logs):
        out.update(convergence_figure(log_dir, fig_dir, task))
    out.update(differences_figure(log_dir, fig_dir))
    out.update(lr_sweep_figure(log_dir, fig_dir))
    merge_manifest(fig_dir, out)
    if (in_notebook() if show is None else show):
        try:
            from IPython.display import display
            display(summ)
            if len(failed):
                display(failed)
        except ImportError:
            pass
    display_entries({k: v for k, v in out.items()}, show)
    return out


def benchmark_table(path: Path, fig_dir: Path) -> dict:
    """Copy ``benchmark_lora.json`` through: the JSON itself and a flat key/value table
    (:func:`harness.analysis.benchmark.flatten`)."""
    import pandas as pd
    data = load_benchmark(path)
    if data is None:
        return {}
    write_json_atomic(fig_dir / path.name, data)
    csv = write_table(pd.DataFrame(flatten(data)), fig_dir, path.stem, json_too=False)
    return {path.stem: {"path": str(csv), "caption": f"The LoRA speed/memory benchmark, copied from {path} "
                                                      f"(flattened keys).", "runs": []}}


SCRATCH_GRIDS = ("adhoc", "smoke")   # git-ignored log folders of hand runs and the smoke test


def build_all(logs_root="logs", fig_root="figures", show: bool | None = False, skip=()) -> dict:
    """Figures and tables for every subdirectory of ``logs_root`` holding run logs (logs/quick,
    logs/sweep, logs/smoke, ...): ``fig_root/<subdir>/`` gets compare_figures + spectra_figures
    output and its ``manifest.json``; ``logs_root/benchmark_lora.json``, if present, is copied
    through as a table to ``fig_root/benchmark/``.  Returns the manifest of everything, keyed
    ``<subdir>/<name>`` (also written to ``fig_root/manifest.json``).  Subdirectories named in ``skip``
    are left out (the CLI skips :data:`SCRATCH_GRIDS` of the repository's own ``logs/``, so a hand run
    never changes the committed figures).

    Refuses (:class:`~harness.logs.CorruptLogs`, before writing anything) when a log there is corrupt or
    foreign, an ok run lacks what its figures need, or its factor file is missing or truncated.  Built in
    ``.<fig_root>.build-<pid>`` beside ``fig_root``; each ``fig_root/<subdir>`` is then replaced whole."""
    root, froot = Path(logs_root), Path(fig_root)
    grids = _checked_grids(root, skip)
    tmp = froot.parent / f".{froot.name or 'figures'}.build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        everything, built = {}, []
        for d in grids:
            out_dir = tmp / d.name
            out_dir.mkdir(parents=True, exist_ok=True)
            manifest = {}
            manifest.update(compare_figures(d, out_dir, show=show))
            manifest.update(spectra_figures(d, out_dir, show=show))
            manifest = _moved(manifest, tmp, froot)
            write_json_atomic(out_dir / "manifest.json", manifest)
            everything.update({f"{d.name}/{k}": v for k, v in manifest.items()})
            built.append(d.name)
        bench = root / "benchmark_lora.json"
        if bench.is_file():
            b = _moved(benchmark_table(bench, tmp / "benchmark"), tmp, froot)
            if b:
                write_json_atomic(tmp / "benchmark" / "manifest.json", b)
                everything.update({f"benchmark/{k}": v for k, v in b.items()})
                built.append("benchmark")
        write_json_atomic(tmp / "manifest.json", everything)
        _swap_in(tmp, froot, built)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return everything


def _checked_grids(root: Path, skip) -> list[Path]:
    """The subdirectories of ``root`` holding run logs, once every log there is well formed, every ok run
    has what its figures need, and every factor file an ok run names is complete; else CorruptLogs."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in skip) if root.is_dir() else []
    grids, problems = [], []
    for d in subdirs:
        logs, bad = scan_logs(d)
        problems += bad
        for path, lg in logs:
            why = complete_run_problem(lg) or factors_problem(lg, d)
            if why:
                problems.append(f"{path}: {why}")
        if logs:
            grids.append(d)
    if problems:
        raise CorruptLogs([f"{p} (no figures were written)" for p in problems])
    return grids


def _moved(manifest: dict, tmp: Path, froot: Path) -> dict:
    """Manifest entries whose paths point into the build directory ``tmp``, pointing into ``froot`` instead."""
    out = {}
    for k, e in manifest.items():
        p = Path(e["path"])
        out[k] = {**e, "path": str(froot / p.relative_to(tmp))} if p.is_relative_to(tmp) else e
    return out


def _swap_in(tmp: Path, froot: Path, names: list[str]) -> None:
    """Move each built ``tmp/<name>`` to ``froot/<name>`` (the old one renamed away first, then deleted), and
    the top manifest last."""
    froot.mkdir(parents=True, exist_ok=True)
    old = tmp / ".old"
    old.mkdir()
    for name in names:
        if (froot / name).exists():
            os.rename(froot / name, old / name)
        os.rename(tmp / name, froot / name)
    os.replace(tmp / "manifest.json", froot / "manifest.json")
