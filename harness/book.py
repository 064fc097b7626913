"""Helpers for the book's pages: where logs and figures are, and showing them with captions.

Pages run with the book directory as working directory; ``STUDY_LOGS`` and ``STUDY_FIGURES``
point them elsewhere (the end-to-end test builds the book from a smoke grid that way).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .prose.readme import headline  # noqa: F401  (the front page calls book.headline)
from .tasks import order_tasks, task_label

ROOT = Path(__file__).resolve().parent.parent
# Book pages run in a kernel without ipywidgets: tqdm.auto (imported by transformers) warns on stderr, which
# the -W build would turn into an error; the pages show no progress bars anyway.
warnings.filterwarnings("ignore", message="IProgress not found")


def logs_root() -> Path:
    return Path(os.environ.get("STUDY_LOGS", ROOT / "logs"))


def grid_logs(name: str) -> Path:
    """The logs of grid ``name``: under ``STUDY_LOGS`` when that has them, else the committed ``logs/<name>``
    (so a book built from a smoke grid still shows the committed round-2 chapters)."""
    p = logs_root() / name
    return p if p.is_dir() else ROOT / "logs" / name


def log_file(name: str) -> Path:
    """A file of ``logs/`` (e.g. a benchmark's JSON), under ``STUDY_LOGS`` when there, else the committed one."""
    p = logs_root() / name
    return p if p.exists() else ROOT / "logs" / name


def figures_root() -> Path:
    return Path(os.environ.get("STUDY_FIGURES", ROOT / "figures"))


def main_grid() -> str:
    """The grid whose results the book reports (``STUDY_GRID``, default ``quick``)."""
    return os.environ.get("STUDY_GRID", "quick")


def figures_dir(grid: str) -> Path:
    """The figures of grid ``grid``: under ``STUDY_FIGURES`` when that has them, else the committed
    ``figures/<grid>`` (as :func:`grid_logs` does for logs)."""
    p = figures_root() / grid
    return p if (p / "manifest.json").is_file() else ROOT / "figures" / grid


def manifest(grid: str) -> dict:
    path = figures_dir(grid) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def show_figure(grid: str, name: str) -> None:
    """Display a figure of ``figures/<grid>/`` with its caption (which names its runs)."""
    from IPython.display import Markdown, display

    entry = _show_png(grid, name)
    if entry is not None:
        display(Markdown(f"**Figure.** {entry['caption']}"))


def show_table(df, caption: str | None = None, floatfmt: int = 4, empty: str = "no runs logged yet") -> None:
    """A DataFrame as an HTML table without its index, numbers rounded, optional caption; ``empty`` is
    what an empty table says instead."""
    from IPython.display import HTML, Markdown, display

    if df is None or len(df) == 0:
        display(Markdown(f"*({empty})*"))
        return
    display(HTML(table_html(df, floatfmt)))
    if caption:
        display(Markdown(f"**Table.** {caption}"))


def table_html(df, floatfmt: int = 4) -> str:
    """A DataFrame as the book's HTML table: no index, numbers to ``floatfmt`` significant digits, and a line
    break opportunity (``<wbr>``) after every ``_``, before every ``[`` and every 16 characters of a token longer
    than 24 (hashes, paths) in the cells, so that identifiers
    like ``lora_fa_svd − random`` wrap instead of widening their column past the page (book/_static/custom.css
    lets cells wrap; tests/test_book_render.py checks that no table overflows)."""
    import re

    html = df.to_html(index=False, float_format=lambda v: f"{v:.{floatfmt}g}", na_rep="–", border=0,
                      classes="table")
    def breakable(text: str) -> str:
        text = re.sub(r"\S{25,}", lambda w: "<wbr>".join(w.group(0)[i:i + 16] for i in range(0, len(w.group(0)), 16)),
                      text)                                         # hashes and paths: a break every 16 characters
        return text.replace("_", "_<wbr>").replace(" [", " <wbr>[")
    return re.sub(r">([^<]+)<", lambda m: ">" + breakable(m.group(1)) + "<", html)


# ------------------------------------------------------------------ tables the pages show
def headline_figure(log_dir) -> str:
    from .analysis.runs import runs_table

    runs = runs_table(log_dir)
    tasks = order_tasks(runs["task"]) if len(runs) else ["mrpc"]
    return f"convergence_{tasks[0]}"


def figure_names(grid: str, prefix: str) -> list[str]:
    return [k for k in manifest(grid) if k.startswith(prefix)]


def setup_table(log_dir):
    """One row per (task, method): the hyperparameters actually logged, and the seeds."""
    import pandas as pd

    from .logs import read_logs

    rows = {}
    for lg in read_logs(log_dir, status=None):
        c = lg["config"]
        key = (c["task"], c["method"], c["lr"])
        r = rows.setdefault(key, dict(task=c["task"], method=c["method"], model=c["model"], rank=c["rank"],
                                      alpha=c["alpha"], dropout=c["dropout"], lr=c["lr"], epochs=c["epochs"],
                                      batch=c["batch_size"], max_len=c["max_length"], warmup=c["warmup_ratio"],
                                      seeds=[]))
        r["seeds"].append(c["seed"])
    df = pd.DataFrame(rows.values())
    if len(df):
        df["seeds"] = df["seeds"].map(lambda s: ", ".join(map(str, sorted(s))))
    return df


def data_table(log_dir):
    import pandas as pd

    from .logs import read_logs

    rows = {}
    for lg in read_logs(log_dir):
        d = lg["data"]
        for f, sha in (d.get("files") or {}).items():
            rows[f] = dict(file=f, source=d.get("kind"), sha256=sha,
                           examples=d["n_train"] if "train" in f else d["n_dev"])
    return pd.DataFrame(sorted(rows.values(), key=lambda r: r["file"]))


def sweep_table(log_dir):
    from .analysis.runs import runs_table

    runs = runs_table(log_dir)
    if len(runs) == 0:
        return runs
    return runs[["task", "method", "lr", "epochs", "main_metric", "final", "best", "best_step", "baseline",
                 "wall_time_s"]].sort_values(["task", "method", "lr"])


def results_table(log_dir) -> tuple:
    from .analysis.runs import summary_table

    s = summary_table(log_dir)
    if len(s) == 0:
        return None, None
    cols = [c for c in ("task", "method", "lr", "main_metric", "summary", "best", "f1", "accuracy", "baseline")
            if c in s.columns]
    t = s[cols].rename(columns={"summary": "final (mean ± std)", "best": "best during training",
                                "baseline": "majority baseline"})
    return t, (f"Final and best dev metric per task and method, mean ± sample std over seeds, from "
               f"`logs/{Path(log_dir).name}`; 'best during training' is the best of the periodic dev evaluations "
               f"(optimistic: it selects on the dev set).")


def grid_status(log_dir, spec_path=None):
    """(table, caption): per task × method × lr of the grid spec (default ``configs/<grid>.yaml``, the
    grid named like ``log_dir``), the seeds whose run is logged, failed, or not run yet in ``log_dir``.
    (None, None) when there is no such spec."""
    import pandas as pd

    from .grid import expand, load_spec, run_status

    log_dir = Path(log_dir)
    spec_path = Path(spec_path) if spec_path else ROOT / "configs" / f"{log_dir.name}.yaml"
    if not spec_path.is_file():
        return None, None
    rows = {}
    for c in expand(load_spec(spec_path)):
        r = rows.setdefault((c["task"], c["method"], c["lr"]), dict(task=c["task"], method=c["method"], lr=c["lr"],
                                                                    done=[], failed=[], todo=[]))
        r[run_status(c, log_dir)].append(c["seed"])
    df = pd.DataFrame(rows.values())
    counts = {k: int(df[k].map(len).sum()) for k in ("done", "failed", "todo")}
    for k in ("done", "failed", "todo"):
        df[k] = df[k].map(lambda seeds: ", ".join(map(str, sorted(seeds))) or "–")
    df = df.rename(columns={"done": "seeds logged", "failed": "seeds failed", "todo": "seeds not run yet"})
    total = sum(counts.values())
    return df, (f"Grid `{spec_path.relative_to(ROOT).as_posix() if spec_path.is_relative_to(ROOT) else spec_path}`: "
                f"{counts['done']} of {total} runs logged, {counts['failed']} failed, {counts['todo']} not run yet "
                f"(`python -m harness grid` resumes it).")


def failed_table(log_dir):
    from .analysis.runs import failed_runs

    return failed_runs(log_dir)


# Hu et al. (2021), Table 2, RoBERTa-base rows: a different model and setup, for orientation only.
PAPER_REFERENCE = [
    dict(method="full fine-tuning (125M trainable)", mrpc="90.2", rte="78.7", cola="63.6"),
    dict(method="LoRA r=8 q,v (0.3M trainable)", mrpc="89.7 ± 0.7", rte="86.6 ± 0.7", cola="63.4 ± 1.2"),
]


def paper_reference():
    import pandas as pd

    return pd.DataFrame(PAPER_REFERENCE)


def environment_table(logs_root):
    import pandas as pd

    from .logs import read_logs

    rows = {}
    for d in sorted(p for p in Path(logs_root).iterdir() if p.is_dir()):
        for lg in read_logs(d):
            e = lg["env"]
            key = (d.name, e.get("torch"), e.get("transformers"), e.get("device"), e.get("cpu"), e.get("threads"))
            r = rows.setdefault(key, dict(grid=d.name, torch=e.get("torch"), transformers=e.get("transformers"),
                                          python=e.get("python"), device=e.get("gpu") or e.get("device"),
                                          cpu=e.get("cpu"), threads=e.get("threads"), runs=0, wall_hours=0.0))
            r["runs"] += 1
            r["wall_hours"] += lg.get("wall_time_s", 0) / 3600
    return pd.DataFrame(rows.values())


def _hardware(env: dict) -> str:
    """A log's machine in words, from its ``env``: "NVIDIA H200" or "CPU (AMD EPYC, 1 thread)"."""
    if env.get("gpu"):
        return env["gpu"]
    t = env.get("threads")
    return f"CPU ({env.get('cpu') or 'unknown'}{f', {t} thread' + ('s' if t != 1 else '') if t else ''})"


def coverage(root=None) -> "pd.DataFrame":
    """One row per logged grid under ``logs/`` (run grids and the planted experiment): runs, tasks, methods,
    seeds per (task, method), hardware and torch version, all read from the logs' ``config`` and ``env``, so the
    book never types a count, a seed number or a machine."""
    import pandas as pd

    from .logs import read_logs

    root = Path(root) if root else logs_root()
    rows = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        logs = ([lg for lg in read_logs(d) if lg.get("config") and lg.get("status", "ok") == "ok"]
                if d.name != "planted" else _planted_logs(d))
        if not logs:
            continue
        cfg = [lg["config"] for lg in logs]
        method = lambda c: c.get("method") or c.get("init")                         # noqa: E731
        cells: dict = {}
        for c in cfg:
            cells.setdefault((c.get("task") or c.get("subspace"), method(c)), set()).add(c.get("seed"))
        n_seeds = sorted({len(v) for v in cells.values()})
        hw = sorted({_hardware(lg.get("env") or {}) for lg in logs})
        rows.append(dict(grid=d.name, runs=len(logs),
                         tasks=", ".join(task_label(t) for t in order_tasks({c["task"] for c in cfg if c.get("task")}))
                         or ", ".join(sorted({c.get("subspace") for c in cfg if c.get("subspace")})),
                         methods=len({method(c) for c in cfg}),
                         seeds=(f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}–{n_seeds[-1]}"),
                         hardware=", ".join(hw), torch=", ".join(sorted({(lg.get("env") or {}).get("torch") or "?"
                                                                      for lg in logs}))))
    return pd.DataFrame(rows)


def _planted_logs(d: Path) -> list[dict]:
    out = []
    for f in sorted(d.glob("*.json")):
        try:
            lg = json.loads(f.read_text())
        except ValueError:
            continue
        if lg.get("status") == "ok":
            out.append(lg)
    return out


def sources(*paths: str) -> None:
    """Display links to the committed files a chapter is computed from (``logs/v2``, ``figures/v2/...csv``),
    relative to the built page (``book/_build/html/<page>.html`` → the repository root is three levels up), so
    they open in a checkout; a path that does not exist is listed without a link."""
    from html import escape

    from IPython.display import HTML, display

    items = []
    for p in paths:
        label = f"<code>{escape(p)}</code>"
        items.append(f'<a href="../../../{escape(p)}">{label}</a>' if (ROOT / p).exists() else label)
    display(HTML('<p class="study-sources">Computed from: ' + ", ".join(items) + "</p>"))


def grid_facts(name: str) -> dict:
    """A grid's runs, seeds (as a range), tasks and hardware, as strings for ``glue`` (keys ``<name>_runs`` …)."""
    cov = coverage()
    row = cov[cov["grid"] == name]
    if not len(row):
        return {f"{name}_{k}": "n/a" for k in ("runs", "seeds", "tasks", "hardware", "methods")}
    r = row.iloc[0]
    return {f"{name}_{k}": str(r[k]) for k in ("runs", "seeds", "tasks", "hardware", "methods")}


def grid_status_table():
    """For every grid spec in configs/: how many of its runs are logged, failed, still to run."""
    import pandas as pd

    from .grid import grid_counts, load_spec
    from .tasks import UserError

    rows = []
    for spec_path in sorted((ROOT / "configs").glob("*.yaml")):
        spec = load_spec(spec_path)
        out = logs_root() / Path(spec.get("out_dir") or spec["name"]).name
        try:
            n = grid_counts(spec, out)      # edge extensions counted; cells whose lr sweep is unfinished wait
        except UserError as e:              # its sweep cannot give a cell's lr: say why, in its row
            rows.append(dict(grid=spec_path.name, runs=None, done=0, failed=0, todo=None, note=str(e)))
            continue
        note = f"{n['waiting']} wait for their lr sweep ({spec.get('lr_from')})" if n["waiting"] else ""
        rows.append(dict(grid=spec_path.name, runs=sum(n.values()), done=n["done"], failed=n["failed"] + n["corrupt"],
                         todo=n["todo"], note=note))
    return pd.DataFrame(rows)


def spectra_summary(log_dir) -> tuple:
    """(table, caption): per task and method, layer-averaged spectral measures of ΔW (from the CSV
    that ``harness figures`` wrote, so the book never recomputes SVDs)."""
    import pandas as pd

    path = figures_dir(Path(log_dir).name) / f"spectra_{Path(log_dir).name}.csv"
    if not path.is_file():
        return None, None
    from .analysis.runs import main_lr_rows, runs_table
    t = main_lr_rows(pd.read_csv(path), runs_table(log_dir))    # each method at its main lr only
    cols = {"stable_rank": "stable rank", "effective_rank": "effective rank", "energy_top1": "energy top-1",
            "amplification": "amplification", "overlap_right_top": "overlap with W top-r (in)",
            "overlap_left_top": "overlap with W top-r (out)", "fa_energy": "energy in span(A₀ᵀ)"}
    cols = {k: v for k, v in cols.items() if k in t.columns}
    g = t.groupby(["task", "method"], sort=False)[list(cols)].mean().reset_index().rename(columns=cols)
    n = t.groupby(["task", "method"], sort=False)["run_id"].nunique().reset_index(drop=True)
    g.insert(2, "runs", n)
    lrs = t.groupby(["task", "method"], sort=False)["lr"].first().reset_index(drop=True)
    g.insert(3, "lr", lrs)
    return g, (f"Spectral measures of ΔW relative to the pretrained W, averaged over the adapted layers and seeds "
               f"of `logs/{Path(log_dir).name}`, each method at its main learning rate (column lr; a grid's extra "
               f"learning-rate block is left out). Overlap: mean cos² of the principal angles between ΔW's top-r "
               f"singular subspace and W's (random subspaces: r/n). Full fine-tuning: from the top-32 SVD of its "
               f"update.")


def benchmark_tables(path=None) -> list[tuple]:
    """[(table, caption)] from ``logs/benchmark_lora.json``: step times and saved-activation bytes."""
    import pandas as pd

    from .analysis.benchmark import load_benchmark
    path = Path(path) if path else logs_root() / "benchmark_lora.json"
    b = load_benchmark(path)
    if b is None:
        return [(None, "No benchmark recorded yet: run `make bench`.")]
    s = b["settings"]
    times = pd.DataFrame([dict(setup=k, median_ms=v["median"], trainable_params=v["trainable_params"])
                          for k, v in b["step_time_ms"].items()])
    ratios = pd.DataFrame([dict(ratio=k, of_medians=v, paired_median=b["ratios_paired_median"][k],
                                target=f"≤ {b['ratio_targets'][k]:.2f}" if k in b["ratio_targets"] else "–")
                           for k, v in b["ratios"].items()])
    mem = pd.DataFrame([dict(setup=k, MiB=v / 2**20, storages=b["saved_storages"][k])
                        for k, v in b["saved_bytes"].items()])
    fa = pd.DataFrame([dict(comparison=k, adapters=v["adapters"], dropout=v["dropout"],
                            measured_MiB=v["measured"] / 2**20, predicted_MiB=v["predicted"] / 2**20,
                            rel_diff=v["rel_diff"],
                            predicted_distinct_MiB=v.get("predicted_distinct_inputs", v["predicted"]) / 2**20)
                       for k, v in b["fa_saving"].items()])
    where = (f"batch {s['batch']} × {s['seq_len']} tokens, rank {s['rank']}, alpha {s['alpha']:g}, "
             f"dropout {s['dropout']}; recorded {b['created']} ({path.name})")
    return [(times, f"Training step time (forward + backward + AdamW), median of {s['timed_steps']} interleaved "
                    f"steps; {where}."),
            (ratios, "Step-time ratios: of the medians, and the median of per-round paired ratios (robust to "
                     "load drift on a shared machine). `floor_qv`: no adapter, gradients forced to every query/value "
                     "output (a rank-0 adapter), the least any q/v adapter can cost."),
            (mem, "Bytes autograd saves for backward in one training forward (storages deduplicated; "
                  "parameters excluded). `_p0`: adapter dropout 0; `_all`: every Linear of the encoder."),
            (fa, "LoRA-FA's saving against LoRA: measured vs predicted Σ tokens·in_features·4 bytes over adapted "
                 "layers. With dropout 0, query/key/value share one input, so the prediction counts distinct "
                 "inputs.")]


def benchmark_verdict(path=None) -> str:
    """Sentences on the speed targets, computed from ``logs/benchmark_lora.json``: each ratio against
    its target, and, when the run has the rank-0 floor, how far any q/v adapter could get."""
    from .analysis.benchmark import load_benchmark
    path = Path(path) if path else logs_root() / "benchmark_lora.json"
    b = load_benchmark(path)
    if b is None:
        return "*(no benchmark recorded yet: run `make bench`)*"
    r, rp, tg, ms = b["ratios"], b["ratios_paired_median"], b["ratio_targets"], b["step_time_ms"]
    out = []
    for k, target in tg.items():
        ok = r[k] <= target
        out.append(f"- `{k}` = {r[k]:.3f} (paired {rp[k]:.3f}): {'within' if ok else 'above'} the target ≤ {target:.2f}.")
    if "floor_over_full" in r:
        out.append(f"- The floor — the frozen model with gradients forced to every query/value output but no adapter "
                   f"(`floor_qv`, {ms['floor_qv']['median']:.0f} ms against {ms['full_ft']['median']:.0f} ms for full "
                   f"fine-tuning) — is already at {r['floor_over_full']:.3f} of full fine-tuning. Our adapters add "
                   f"{ms['ours_lora']['median'] - ms['floor_qv']['median']:.0f} ms to it ({r['ours_over_floor'] - 1:.0%}; "
                   f"PEFT's add {ms['peft_lora']['median'] - ms['floor_qv']['median']:.0f} ms). LoRA saves the weight-gradient "
                   f"GEMMs and the optimizer over {ms['full_ft']['trainable_params'] / 1e6:.1f} M parameters, but its "
                   "forward is the full model's and its backward must still carry input gradients through every layer "
                   "down to layer 0's query and value.")
        if "ours_over_full" in tg:
            budget = tg["ours_over_full"] * ms["full_ft"]["median"] - ms["floor_qv"]["median"]
            out.append(f"- Hence the target `ours_over_full` ≤ {tg['ours_over_full']:.2f} leaves any q/v adapter "
                       f"{budget:.0f} ms above the floor ({budget / ms['floor_qv']['median']:.1%}) for its dropout, "
                       "its own matrix products and its optimizer step"
                       + (": out of reach on this workload." if budget < 0.05 * ms["floor_qv"]["median"] else "."))
    out.append(f"- Recorded {b['created']} with {b['threads']} threads on {b['cpu_model']} "
               f"(load average {b['load_avg_before_after'][0]:.2f} before, {b['load_avg_before_after'][1]:.2f} after).")
    return "\n".join(out)


def chosen_lr_table(sweep_dir, preset: str = "quick"):
    """Per task: the (lr, epochs) pairs the sweep tried, the one with the best final dev metric, and
    the adapter lr and epochs the preset uses (they should agree: the preset is set from the sweep)."""
    import pandas as pd

    from .config import make_config
    from .analysis.runs import runs_table

    runs = runs_table(sweep_dir)
    rows = []
    for task, g in (runs.groupby("task", sort=False) if len(runs) else []):
        best = g.loc[g["final"].idxmax()]
        rows.append(dict(task=task, metric=best["main_metric"],
                         tried=", ".join(f"{lr:g}×{ep}ep" for lr, ep in sorted(set(zip(g["lr"], g["epochs"])))),
                         best_lr=best["lr"], best_epochs=best["epochs"], best_final=best["final"],
                         majority_baseline=best["baseline"],
                         beats_baseline=bool(best["final"] > best["baseline"]),
                         preset_lr=make_config(task, "random", preset)["lr"],
                         preset_epochs=make_config(task, "random", preset)["epochs"]))
    return pd.DataFrame(rows)


def sweep_verdict(sweep_dir) -> str:
    """One sentence per task and method, computed from the sweep logs: did any run beat the
    majority-class baseline, and with which learning rate and epochs?"""
    from .analysis.runs import runs_table

    runs = runs_table(sweep_dir)
    lines = []
    for (task, method), g in (runs.groupby(["task", "method"], sort=False) if len(runs) else []):
        best = g.loc[g["final"].idxmax()]
        what = f"lr {best['lr']:g}, {best['epochs']} epochs"
        head = f"**{task_label(task)}, {method}**"
        if (g["final"] > g["baseline"]).any():
            lines.append(f"- {head} learns: best final dev {best['main_metric']} {best['final']:.3f} ({what}) against "
                         f"a majority-class baseline of {best['baseline']:.3f}.")
        else:
            lines.append(f"- {head} is **not learned** in any of its {len(g)} sweep runs: the best final dev "
                         f"{best['main_metric']} is {best['final']:.3f} ({what}), not above the majority-class baseline "
                         f"of {best['baseline']:.3f}. Such results below are at chance level; they are shown, not hidden.")
    return "\n".join(lines)


# ------------------------------------------------------------------ display helpers for numbered figures and glue
def figure(grid: str, name: str) -> None:
    """Display only the PNG of figure ``name`` of ``figures/<grid>/``, as the cell's single output, so that the
    cell's ``mystnb: figure:`` metadata (caption and ``name`` for ``{numref}``) wraps it; when the figure is not
    built, a one-line note takes its place."""
    _show_png(grid, name)


def _show_png(grid: str, name: str) -> dict | None:
    """Display the PNG of figure ``name`` of ``figures/<grid>/``; its manifest entry, or None (and a note)
    when it is not built."""
    from IPython.display import Image, Markdown, display

    entry = manifest(grid).get(name)
    if entry is None:
        display(Markdown(f"*(figure `{name}` of grid `{grid}` not built: `python -m harness figures` makes it)*"))
        return None
    path = Path(entry["path"])
    if not path.is_absolute():
        path = figures_dir(grid) / path.name
    display(Image(filename=str(path)))
    return entry


def glue_all(values: dict) -> None:
    """``glue`` every (key, value) without displaying it: strings as Markdown (for the ``{glue:md}`` role, so
    they render without quotes and may hold math), numbers as they are (for ``{glue:text}`key:.3f```)."""
    from IPython.display import Markdown
    from myst_nb import glue

    for key, value in values.items():
        glue(key, Markdown(value) if isinstance(value, str) else value, display=False)
