"""One rule for paths (harness/paths.py): relative paths are from the repository root in every command and
notebook, whatever the current directory; and ``python -m harness.fixtures DIR`` writes the smoke data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import paths
from harness.logs import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
LOG_KEYS = ("run_id", "status", "config", "config_hash", "history", "final", "env", "data")


def fake_log(run_id: str) -> dict:
    """The fields that make a file a run log (harness.logs.REQUIRED)."""
    return {k: (run_id if k == "run_id" else "ok" if k == "status" else {}) for k in LOG_KEYS}


@pytest.fixture
def study_root(tmp_path, monkeypatch):
    """$STUDY_ROOT = a temp tree with logs/{a,b} (run logs), logs/empty, logs/junk (a non-log JSON); the
    current directory elsewhere."""
    root = tmp_path / "root"
    for grid in ("a", "b"):
        write_json_atomic(root / "logs" / grid / f"{grid}-run.json", fake_log(f"{grid}-run"))
    (root / "logs" / "empty").mkdir()
    write_json_atomic(root / "logs" / "junk" / "capture.json", {"not": "a log"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("STUDY_ROOT", str(root))
    monkeypatch.chdir(elsewhere)
    return root


def test_root_is_the_checkout_without_study_root(monkeypatch, tmp_path):
    monkeypatch.delenv("STUDY_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.repo_root() == ROOT
    assert paths.resolve("logs/quick") == ROOT / "logs" / "quick"          # not tmp_path/logs/quick
    assert paths.resolve(tmp_path / "x") == tmp_path / "x"                 # absolute: unchanged
    assert paths.resolve("~/x") == Path.home() / "x"


def test_study_root_moves_every_relative_path(study_root):
    assert paths.repo_root() == study_root
    assert paths.resolve("logs/a") == study_root / "logs" / "a"
    with paths.at_repo_root() as root:
        assert root == study_root and Path.cwd() == study_root
    assert Path.cwd() == study_root.parent / "elsewhere"                     # restored
    assert paths.grid_figures_dir("logs/a") == Path("figures") / "a"
    assert paths.grid_figures_dir("logs/a/") == Path("figures") / "a"


def test_grids_with_logs_and_require_logs(study_root):
    assert paths.grids_with_logs() == ["a", "b"]                             # not empty/, not junk/
    assert paths.require_logs("logs/a") == "logs/a"                          # unchanged when it has logs
    for bad, what in (("logs/missing", "does not exist"), ("logs/empty", "holds no run logs"),
                      ("logs/junk", "holds no run logs"), ("logs/a/a-run.json", "is not a directory")):
        with pytest.raises(paths.NoLogs) as e:
            paths.require_logs(bad)
        msg = str(e.value)
        assert "\n" not in msg and repr(bad) in msg and what in msg, msg
        assert "grids with logs under logs: a, b" in msg, msg
    # in a notebook the error is its one line, not a traceback
    with pytest.raises(paths.NoLogs) as e:
        paths.require_logs("logs/missing")
    assert e.value._render_traceback_() == [f"NoLogs: {e.value}"]


def test_require_logs_when_no_grid_has_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDY_ROOT", str(tmp_path))
    with pytest.raises(paths.NoLogs, match=r"no grid under logs has logs yet \(run one: python -m harness grid"):
        paths.require_logs("logs/quick")


def test_cli_paths_are_from_the_root(study_root, capsys):
    """``figures --logs L --out F``, ``status SPEC``: relative to $STUDY_ROOT, not the cwd; cwd given back."""
    from harness.__main__ import main
    from harness.grid import grid_out_dir, load_spec

    (study_root / "configs").mkdir()
    (study_root / "configs" / "s.yaml").write_text((ROOT / "configs" / "smoke.yaml").read_text())
    cwd = Path.cwd()
    assert main(["status", "configs/s.yaml"]) == 0
    out = capsys.readouterr().out
    assert "todo" in out and out.strip().splitlines()[-1].endswith("todo")
    assert grid_out_dir(load_spec(study_root / "configs" / "s.yaml")) == study_root / "logs" / "smoke"
    assert grid_out_dir({}, "logs/x") == study_root / "logs" / "x"
    assert main(["figures", "--logs", "logs/empty", "--out", "figs"]) == 0
    assert json.loads((study_root / "figs" / "manifest.json").read_text()) == {}
    assert Path.cwd() == cwd and not any(cwd.iterdir())                     # nothing written in the cwd
    assert main(["status", "smoke.yaml"]) == 2
    assert "grid spec 'smoke.yaml' not found" in capsys.readouterr().err


def test_study_root_that_is_no_directory_is_one_line(tmp_path, monkeypatch, capsys):
    from harness.__main__ import main
    monkeypatch.setenv("STUDY_ROOT", str(tmp_path / "nope"))
    assert main(["status", "configs/smoke.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"$STUDY_ROOT '{tmp_path / 'nope'}' is not a directory" in err, err


def test_help_states_the_rule():
    proc = subprocess.run([sys.executable, "-m", "harness", "figures", "-h"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0
    assert "from the repository root, not the current directory" in " ".join(proc.stdout.split())


# ============================================================================ python -m harness.fixtures
def fixtures_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.fixtures", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def test_fixtures_cli_writes_the_smoke_data(tmp_path):
    from harness.data import load_local
    from harness.fixtures import make_examples
    from harness.tasks import TASKS

    proc = fixtures_cli(tmp_path / "glue", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert str(tmp_path / "glue") in proc.stdout and "--data-dir" in proc.stdout
    assert sorted(p.relative_to(tmp_path / "glue").as_posix() for p in (tmp_path / "glue").rglob("*.tsv")) == [
        f"{d}/{s}.tsv" for d in ("CoLA", "MRPC", "RTE") for s in ("dev", "train")]
    for task in ("mrpc", "rte", "cola"):        # the examples the smoke preset trains on, read back
        splits, _ = load_local(TASKS[task], tmp_path / "glue")
        assert splits["train"] == make_examples(task, "train") and splits["dev"] == make_examples(task, "dev")


def test_fixtures_cli_relative_dir_is_from_the_root(tmp_path):
    env_root = tmp_path / "root"
    env_root.mkdir()
    proc = subprocess.run([sys.executable, "-m", "harness.fixtures", "fx", "--tasks", "mrpc"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "STUDY_ROOT": str(env_root)})
    assert proc.returncode == 0, proc.stderr
    assert (env_root / "fx" / "MRPC" / "train.tsv").is_file() and not (tmp_path / "fx").exists()


@pytest.mark.parametrize("args, message", [
    ((), "the following arguments are required: DIR"),
    (("d", "--tasks", "mrpc", "qnli"), "unknown fixture task 'qnli'; valid: mrpc, rte, cola, stsb"),
])
def test_fixtures_cli_bad_input_is_one_line(tmp_path, args, message):
    proc = fixtures_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "d").exists()
