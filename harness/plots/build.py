"""``python -m harness figures``: every table and figure of every grid under ``logs/``, and the manifests."""
from __future__ import annotations

from pathlib import Path

from ..analysis.benchmark import flatten, load_benchmark
from ..analysis.runs import describe_runs, failed_runs, load_logs, runs_table, summary_table
from ..logs import write_json_atomic
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
    never changes the committed figures)."""
    root, froot = Path(logs_root), Path(fig_root)
    everything = {}
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in skip) if root.is_dir() else []
    for d in subdirs:
        if not load_logs(d, status=None):
            continue
        out_dir = froot / d.name
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = {}
        manifest.update(compare_figures(d, out_dir, show=show))
        manifest.update(spectra_figures(d, out_dir, show=show))
        write_json_atomic(out_dir / "manifest.json", manifest)
        everything.update({f"{d.name}/{k}": v for k, v in manifest.items()})
    bench = root / "benchmark_lora.json"
    if bench.is_file():
        b = benchmark_table(bench, froot / "benchmark")
        if b:
            write_json_atomic(froot / "benchmark" / "manifest.json", b)
            everything.update({f"benchmark/{k}": v for k, v in b.items()})
    froot.mkdir(parents=True, exist_ok=True)
    write_json_atomic(froot / "manifest.json", everything)
    return everything

