"""Write the thin notebooks in notebooks/ (parameters cell + calls into the packages).

The .ipynb files are committed; this script is their source, so edits happen here:
``python tools/make_notebooks.py``.
"""
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent.parent / "notebooks"


def notebook(title: str, intro: str, params: str, *cells: str):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbf.v4.new_markdown_cell(f"# {title}\n\n{intro}"),
                nbf.v4.new_code_cell(params, metadata={"tags": ["parameters"]})]
    nb.cells += [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    for i, cell in enumerate(nb.cells):     # stable ids: regenerating does not churn the committed files
        cell.id = f"cell-{i}"
    return nb


# Relative paths in every notebook are from the repository root (harness.paths), whether the kernel starts
# in notebooks/ (Jupyter) or anywhere else (papermill): the first code cell changes into the root.
NOTEBOOKS = {
    "train.ipynb": notebook(
        "One training run",
        "Trains one configuration and writes its log (`<out_dir>/<run_id>.json`) and adapter factors "
        "(`<run_id>.safetensors`). The grid (`python -m harness grid configs/quick.yaml`) executes this "
        "notebook with papermill, one copy per run; you can also run it by hand (relative paths are from "
        "the repository root).",
        '# Parameters (papermill overrides these)\n'
        'task = "mrpc"          # mrpc, rte, cola, ...\n'
        'method = "random"      # full, random, svd, svd_seed, lora_fa, ... (harness.config.METHODS)\n'
        'preset = "quick"       # smoke, quick, v2, paper\n'
        'seed = 0\n'
        'overrides = {}         # any config field, e.g. {"lr": 1e-3, "epochs": 2}\n'
        'data_dir = None        # classic GLUE dir; None: $GLUE_DIR, else the hub\n'
        'out_dir = "logs/adhoc"\n'
        'device = None          # None: cuda if available\n'
        'run_options = {}       # e.g. {"save_factors": False} for a learning-rate sweep',
        "from harness.config import make_config\n"
        "from harness.paths import use_repo_root\n"
        "from harness.train import run\n"
        "from harness.plots.training import show_run\n\n"
        "use_repo_root()   # relative paths (out_dir, data_dir, $GLUE_DIR) are from the repository root\n"
        "cfg = make_config(task, method, preset, seed=seed, **overrides)\n"
        "log = run(cfg, out_dir, data_dir, device=device, **run_options)",
        "show_run(log)",
    ),
    "spectra.ipynb": notebook(
        "Spectra and subspace geometry of ΔW",
        "Singular values, effective ranks and principal angles of ΔW = s·BA for the runs of one grid, "
        "computed from the saved factors (never the dense product). Writes figures and tables to "
        "`figures/<grid>/` (e.g. `figures/quick/`) and shows each figure with its caption.",
        'log_dir = "logs/quick"      # the grid to analyse (relative paths: from the repository root)\n'
        'fig_dir = None              # None: figures/<grid>, here figures/quick\n'
        'task = None                 # None: every task in log_dir',
        "from harness.paths import grid_figures_dir, require_logs, use_repo_root\n"
        "from harness.plots.spectra import spectra_figures\n\n"
        "use_repo_root()                   # relative paths are from the repository root\n"
        "log_dir = require_logs(log_dir)   # stops with one line naming the grids that have logs\n"
        "fig_dir = fig_dir or grid_figures_dir(log_dir)\n"
        "written = spectra_figures(log_dir, fig_dir, task=task)",
        "md:What was written (each file's caption, naming its runs, is in `manifest.json` beside it):",
        "import pandas as pd\n\n"
        "pd.DataFrame([(name, e[\"path\"]) for name, e in written.items()], columns=[\"output\", \"file\"])",
    ),
    "compare.ipynb": notebook(
        "Comparing methods: convergence and final metrics",
        "Convergence curves (mean and band over seeds), the final-metric table (mean ± std) and the "
        "paired-by-seed comparisons between methods for the runs of one grid. Writes figures and tables "
        "to `figures/<grid>/` (e.g. `figures/quick/`).",
        'log_dir = "logs/quick"      # the grid to compare (relative paths: from the repository root)\n'
        'fig_dir = None              # None: figures/<grid>, here figures/quick',
        "from harness.paths import grid_figures_dir, require_logs, use_repo_root\n"
        "from harness.plots.build import compare_figures\n\n"
        "use_repo_root()                   # relative paths are from the repository root\n"
        "log_dir = require_logs(log_dir)   # stops with one line naming the grids that have logs\n"
        "fig_dir = fig_dir or grid_figures_dir(log_dir)\n"
        "written = compare_figures(log_dir, fig_dir)   # shows the final-metric table and each figure",
        "md:Paired by seed, each method at its preset's learning rate:",
        "from harness.prose.findings import comparison_table\n\n"
        "comparison_table(log_dir)",
    ),
    "inspect.ipynb": notebook(
        "What a LoRA adapter does to its model",
        "The report of `lora inspect` for one adapter (a PEFT adapter directory, a run log or a factor file): "
        "the singular spectrum of ΔW = s·BA by layer, how much of it lies in W's top singular subspaces, its "
        "amplification and the intruder dimensions of W + ΔW, in words, tables and figures. The same as "
        "`lora inspect ADAPTER --base BASE --out OUT` on the command line.",
        'adapter = "logs/v2/mrpc-random-r8-lr1e-3-s0-442a24ea.json"   # PEFT dir, run log or factor file\n'
        'base = "bundled:all-MiniLM-L6-v2"   # the base model: a directory, a hub id in the local cache, or None\n'
        'out = None                          # a directory for report.md, layers.csv, inspect.json and the figures',
        "from IPython.display import Image, Markdown, display\n\n"
        "from harness.models import resolve_model_path\n"
        "from harness.paths import use_repo_root\n"
        "from lora.inspect import inspect_adapter\n"
        "from lora.inspect_report import figures, png_bytes, report_markdown, write_report\n\n"
        "use_repo_root()   # relative paths are from the repository root\n"
        "result = inspect_adapter(adapter, base=resolve_model_path(base) if base else None)\n"
        "if out:\n"
        "    write_report(result, out)\n"
        "Markdown(report_markdown(result))",
        "for name, fig in figures(result).items():\n"
        "    display(Image(png_bytes(fig)))",
    ),
}

if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    for name, nb in NOTEBOOKS.items():
        nbf.write(nb, HERE / name)
        print("wrote", HERE / name)
