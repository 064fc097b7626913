"""The three notebooks, executed by papermill as Jupyter runs them: the kernel starts in ``notebooks/`` of a
copy of the tree ($STUDY_ROOT), relative paths are from that root, figures land in ``figures/<grid>/``, and
nothing is written anywhere else.  Tiny RoBERTa on the synthetic fixture (no downloads); about a minute."""
import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("train.ipynb", "spectra.ipynb", "compare.ipynb", "inspect.ipynb")
GRID = "nbgrid"
TINY = {"epochs": 1, "max_train_examples": 16}     # a few optimiser steps per run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tree_files(root: Path) -> dict[str, int]:
    """Every file under ``root`` (relative path → mtime in ns)."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def execute(name: str, tree: Path, out: Path, **parameters):
    import papermill
    return papermill.execute_notebook(str(tree / "notebooks" / name), str(out / name), parameters=parameters,
                                      cwd=str(tree / "notebooks"), kernel_name="python3", progress_bar=False)


def cell_outputs(nb) -> list[list[dict]]:
    return [c.get("outputs", []) for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A copy of the notebooks in tree/notebooks, the fixture data outside the tree; train.ipynb trains one run
    into logs/nbgrid (a relative out_dir), three more runs are added in-process (2 methods × 2 seeds); then
    spectra and compare run on logs/nbgrid with their default fig_dir."""
    from harness.config import make_config
    from harness.fixtures import write_fixture
    from harness.train import run

    base = tmp_path_factory.mktemp("nb")
    tree, out = base / "tree", base / "executed"
    out.mkdir()
    (tree / "notebooks").mkdir(parents=True)
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, tree / "notebooks" / name)
    data = write_fixture(base / "glue", tasks=("mrpc",))
    env = {"STUDY_ROOT": str(tree), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TQDM_DISABLE": "1", "GIT_OPTIONAL_LOCKS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    repo_before = {d: tree_files(ROOT / d) for d in ("figures", "logs", "notebooks")}
    with pytest.MonkeyPatch.context() as mp:       # the kernels inherit this environment
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("GLUE_DIR", raising=False)
        train_nb = execute("train.ipynb", tree, out, task="mrpc", method="random", preset="smoke", seed=0,
                           overrides=TINY, data_dir=str(data), out_dir=f"logs/{GRID}", device="cpu")
        after_train = tree_files(tree)
        for method, seed in (("svd", 0), ("random", 1), ("svd", 1)):
            run(make_config("mrpc", method, "smoke", seed=seed, **TINY), tree / "logs" / GRID, data, device="cpu",
                progress=False)
        before = tree_files(tree)
        spectra_nb = execute("spectra.ipynb", tree, out, log_dir=f"logs/{GRID}")
        compare_nb = execute("compare.ipynb", tree, out, log_dir=f"logs/{GRID}")
        after = tree_files(tree)
        import papermill
        with pytest.raises(papermill.PapermillExecutionError) as missing:
            execute("compare.ipynb", tree, out, log_dir="logs/nope")
        after_missing = tree_files(tree)
    repo_after = {d: tree_files(ROOT / d) for d in ("figures", "logs", "notebooks")}
    return dict(tree=tree, train=train_nb, spectra=spectra_nb, compare=compare_nb, after_train=after_train,
                before=before, after=after, after_missing=after_missing, missing=missing.value,
                repo_before=repo_before, repo_after=repo_after)


def test_train_notebook_logs_one_run_under_the_root(study):
    new = set(study["after_train"])
    logs = [f for f in new if f.endswith(".json")]
    assert len(logs) == 1 and logs[0].startswith(f"logs/{GRID}/mrpc-random-r4-"), sorted(new)
    assert new == {"notebooks/" + n for n in NOTEBOOKS} | {logs[0], logs[0].replace(".json", ".safetensors")}
    log = json.loads((study["tree"] / logs[0]).read_text())
    assert log["status"] == "ok" and log["config"]["epochs"] == 1


def test_figures_go_to_the_grids_figure_dir_and_nowhere_else(study):
    new = {f for f in study["after"] if f not in study["before"] or study["after"][f] != study["before"][f]}
    assert new and all(f.startswith(f"figures/{GRID}/") for f in new), sorted(new)
    names = {f.removeprefix(f"figures/{GRID}/") for f in new}
    expected = {"manifest.json", f"runs_{GRID}.csv", f"summary_{GRID}.csv", f"spectra_{GRID}.csv",
                "convergence_mrpc.png", "sv_decay_mrpc.png", "effective_rank_mrpc.png", "angles_mrpc.png",
                "similarity_mrpc.png"}
    assert expected <= names, sorted(expected - names)
    manifest = json.loads((study["tree"] / "figures" / GRID / "manifest.json").read_text())
    for entry in manifest.values():     # paths relative to the root, as `python -m harness figures` writes them
        assert entry["path"].startswith(f"figures/{GRID}/") and (study["tree"] / entry["path"]).is_file()


def test_nothing_written_in_the_repository(study):
    assert study["repo_after"] == study["repo_before"]


def test_notebooks_show_figures_and_tables_not_dicts(study):
    for name in ("spectra", "compare"):
        outputs = [o for cell in cell_outputs(study[name]) for o in cell]
        assert any("image/png" in o.get("data", {}) for o in outputs), name
        assert not any(o.get("output_type") == "error" for o in outputs), name
        last = cell_outputs(study[name])[-1]
        assert last and "text/html" in last[-1]["data"] and "<table" in last[-1]["data"]["text/html"], name
        for o in outputs:    # no cell ends in a dict printout
            assert not o.get("data", {}).get("text/plain", "").startswith("{"), (name, o)


def test_missing_log_dir_is_one_line_naming_the_grids(study):
    err = study["missing"]
    assert err.ename == "NoLogs"
    assert "'logs/nope'" in err.evalue and "does not exist" in err.evalue and f"grids with logs under logs: {GRID}" \
        in err.evalue, err.evalue
    assert study["after_missing"] == study["after"]              # nothing written


def test_defaults_point_at_a_committed_grid_and_its_figure_dir():
    """Opened as they are, spectra and compare read logs/quick and write figures/quick (never figures/)."""
    import nbformat
    from harness.paths import grid_figures_dir, has_run_logs
    for name in ("spectra.ipynb", "compare.ipynb"):
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        ns = {}
        exec(params.source, ns)
        assert ns["log_dir"] == "logs/quick" and ns["fig_dir"] is None, name
        assert has_run_logs(ROOT / ns["log_dir"]) and grid_figures_dir(ns["log_dir"]) == Path("figures/quick")


def test_committed_notebooks_are_what_make_notebooks_writes():
    import importlib.util

    import nbformat
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "tools" / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert set(mod.NOTEBOOKS) == set(NOTEBOOKS)
    for name, nb in mod.NOTEBOOKS.items():
        assert (ROOT / "notebooks" / name).read_text() == nbformat.writes(nb) + "\n", \
            f"notebooks/{name} differs from tools/make_notebooks.py: run python tools/make_notebooks.py"
