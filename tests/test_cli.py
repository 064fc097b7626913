"""The command line (``python -m harness``) on bad input: exit code 2, one ``error:`` line on stderr
that names the bad value, and never a traceback.  Each case fails before any training."""
from __future__ import annotations

import subprocess
import sys

from harness.tasks import TASKS


def harness(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and r.stderr.endswith("\n"), f"stderr is not one line: {r.stderr!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    assert r.stdout == ""
    return line


def test_unknown_task(subprocess_env, repo_root):
    r = harness(["run", "--task", "mrcp", "--preset", "smoke"], subprocess_env, repo_root)
    assert_user_error(r, "unknown task 'mrcp'", *TASKS)


def test_unknown_method(subprocess_env, repo_root):
    r = harness(["run", "--task", "mrpc", "--method", "pissa", "--preset", "smoke"], subprocess_env, repo_root)
    assert_user_error(r, "unknown method 'pissa'", "full", "random", "svd", "lora_fa")


def test_unknown_preset(subprocess_env, repo_root):
    r = harness(["run", "--task", "mrpc", "--preset", "huge"], subprocess_env, repo_root)
    assert_user_error(r, "unknown preset 'huge'", "smoke", "quick", "paper")


def test_data_dir_missing_files(subprocess_env, repo_root, tmp_path):
    (tmp_path / "RTE").mkdir()
    r = harness(["run", "--task", "rte", "--preset", "smoke", "--data-dir", tmp_path, "--out-dir", tmp_path / "o"],
                subprocess_env, repo_root)
    assert_user_error(r, str(tmp_path / "RTE" / "train.tsv"), str(tmp_path / "RTE" / "dev.tsv"),
                      "<dir>/RTE/train.tsv")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_malformed_tsv(subprocess_env, repo_root, tmp_path):
    from harness.fixtures import write_fixture
    write_fixture(tmp_path, tasks=("mrpc",))
    train = tmp_path / "MRPC" / "train.tsv"
    lines = train.read_text(encoding="utf-8").split("\n")
    lines[5] = lines[5].rsplit("\t", 1)[0]                      # file line 6 loses its label column
    train.write_text("\n".join(lines), encoding="utf-8")
    r = harness(["run", "--task", "mrpc", "--preset", "smoke", "--data-dir", tmp_path, "--out-dir", tmp_path / "o"],
                subprocess_env, repo_root)
    assert_user_error(r, str(train), "line 6", "expected 3 tab-separated fields, got 2")


def test_missing_grid_spec(subprocess_env, repo_root, tmp_path):
    spec = tmp_path / "nope.yaml"
    r = harness(["grid", spec], subprocess_env, repo_root)
    assert_user_error(r, f"grid spec '{spec}' not found", "configs/")
