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


NOTEBOOKS = {
    "train.ipynb": notebook(
        "One training run",
        "Trains one configuration and writes its log (`<out_dir>/<run_id>.json`) and adapter factors "
        "(`<run_id>.safetensors`). The grid (`python -m harness grid configs/quick.yaml`) executes this "
        "notebook with papermill, one copy per run; you can also run it by hand.",
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
        "from harness.config import make_config\nfrom harness.train import run\nfrom harness.report import show_run\n\n"
        "cfg = make_config(task, method, preset, seed=seed, **overrides)\n"
        "log = run(cfg, out_dir, data_dir, device=device, **run_options)",
        "show_run(log)",
    ),
    "spectra.ipynb": notebook(
        "Spectra and subspace geometry of ΔW",
        "Singular values, effective ranks and principal angles of ΔW = s·BA for the runs of one grid, "
        "computed from the saved factors (never the dense product). Writes figures to `figures/`.",
        'log_dir = "logs/quick"      # the runs to analyse\n'
        'fig_dir = "figures"\n'
        'task = None                 # None: every task in log_dir',
        "from harness.report import spectra_figures\n\nspectra_figures(log_dir, fig_dir, task=task)",
    ),
    "compare.ipynb": notebook(
        "Comparing methods: convergence and final metrics",
        "Convergence curves (mean and band over seeds), the final-metric table (mean ± std) and the "
        "paired-by-seed comparisons between methods for the runs of one grid. Writes figures and tables "
        "to `figures/`.",
        'log_dir = "logs/quick"\n'
        'fig_dir = "figures"',
        "from harness.report import compare_figures\n\ncompare_figures(log_dir, fig_dir)",
        "from harness.findings import comparison_table\n\ncomparison_table(log_dir)   # paired by seed, "
        "at each method's preset lr",
    ),
}

if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    for name, nb in NOTEBOOKS.items():
        nbf.write(nb, HERE / name)
        print("wrote", HERE / name)
