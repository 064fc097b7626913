"""Grids past one machine: the Ray executor, one GPU per process worker, the install's lock, and provenance.

The Ray tests start a local Ray instance (2 CPUs) on the smoke preset; they are skipped where Ray is not installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.fixtures import write_fixture

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("glue"), tasks=("mrpc",))


def smoke_spec(path: Path, methods, seeds=(0,), epochs=1) -> Path:
    path.write_text(yaml.safe_dump({"name": "scale", "preset": "smoke", "tasks": ["mrpc"], "methods": list(methods),
                                    "seeds": list(seeds), "overrides": {"epochs": epochs}}))
    return path


def cli(capsys, *args):
    from harness.__main__ import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# ============================================================================ GPUs per process worker
def test_worker_i_gets_gpu_i_mod_n():
    from harness.grid import gpu_assignment
    assert gpu_assignment(5, ["0", "1"]) == ["0", "1", "0", "1", "0"]
    assert gpu_assignment(2, ["GPU-a", "GPU-b", "GPU-c"]) == ["GPU-a", "GPU-b"]
    assert gpu_assignment(3, []) is None


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    from harness.grid import visible_gpus
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_each_pool_worker_sets_its_own_cuda_visible_devices(monkeypatch):
    import harness.grid as grid
    monkeypatch.setattr(grid, "visible_gpus", lambda: ["3", "7"])
    pool = grid._worker_pool(2, 1, None)
    try:
        seen = set(pool.map(os.getenv, ["CUDA_VISIBLE_DEVICES"] * 40))
        assert seen <= {"3", "7"} and len(pool._processes) == 2
    finally:
        pool.shutdown()
    pool = grid._worker_pool(2, 1, "cpu")       # runs pinned to the CPU: no GPU is handed out
    try:
        assert set(pool.map(os.getenv, ["CUDA_VISIBLE_DEVICES"] * 4)) == {os.environ.get("CUDA_VISIBLE_DEVICES")}
    finally:
        pool.shutdown()


# ============================================================================ lock and provenance
def test_the_lock_pins_every_package_with_hashes():
    text = (ROOT / "requirements.txt").read_text()
    entries = [e for e in text.split("\n") if e and not e.startswith((" ", "#"))]
    assert len(entries) > 100
    assert all("==" in e and e.endswith("\\") for e in entries), [e for e in entries if "==" not in e][:3]
    assert text.count("--hash=sha256:") >= len(entries)
    assert "torch==2.13.0+cpu" in entries[[e.split("==")[0] for e in entries].index("torch")]


def test_this_environment_is_the_lock_and_logs_say_so():
    from harness.provenance import LOCK, lock_state
    state = lock_state()
    assert state["lock_sha256"] == hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert state["differs"] == {}, state["differs"]       # installed by `make install` from requirements.txt
    import torch
    assert state["packages"]["torch"] == torch.__version__


def test_code_state_names_the_checked_out_commit():
    from harness.provenance import code_state
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    state = code_state()
    assert state["git_commit"] == head.stdout.strip() and isinstance(state["git_dirty"], bool)


def test_a_grid_refuses_a_dirty_tree_in_one_line(monkeypatch, capsys, tmp_path, glue):
    import harness.provenance as prov
    import harness.steps as steps
    monkeypatch.delenv(prov.ALLOW_DIRTY_ENV, raising=False)
    dirty = lambda: {"git_commit": "0123456789abcdef", "git_dirty": True,          # noqa: E731
                     "dirty_files": ["harness/train.py", "lora/core.py"]}
    monkeypatch.setattr(prov, "code_state", dirty)       # what the grid checks
    monkeypatch.setattr(steps, "code_state", dirty)      # what the run logs
    spec = smoke_spec(tmp_path / "s.yaml", ["random"])
    rc, out, err = cli(capsys, "grid", spec, "--data-dir", glue, "--out-dir", tmp_path / "o", "--executor", "process")
    assert rc == 2 and err.count("\n") == 1, err
    assert "0123456789" in err and "harness/train.py, lora/core.py" in err and "--allow-dirty" in err
    assert not (tmp_path / "o").exists()
    rc, out, err = cli(capsys, "grid", spec, "--data-dir", glue, "--out-dir", tmp_path / "o", "--executor", "process",
                       "--device", "cpu", "--allow-dirty")
    assert rc == 0 and out.strip().endswith("1 done, 0 failed"), err
    log = json.loads(next((tmp_path / "o").glob("*.json")).read_text())
    assert log["env"]["git_dirty"] is True and log["env"]["lock_sha256"] == prov.lock_state()["lock_sha256"]


# ============================================================================ figures' numbers
def test_tables_are_rounded_so_thread_count_noise_vanishes(tmp_path):
    import pandas as pd
    from harness.plots.style import write_table
    a = pd.DataFrame({"x": [0.1234564999, 2.0, float("nan")], "sv": [[1.23456789, 0.5], [1e-9, 3.0], []],
                      "name": ["a", "b", "c"], "n": [1, 2, 3]})
    b = a.copy()
    b["x"] = [0.1234565001 - 2e-10, 2.0 + 1e-12, float("nan")]     # last-bit noise
    b["sv"] = [[1.23456789 + 1e-14, 0.5], [1e-9, 3.0], []]
    write_table(a, tmp_path / "a", "t")
    write_table(b, tmp_path / "b", "t")
    for suffix in (".csv", ".json"):
        assert (tmp_path / "a" / f"t{suffix}").read_bytes() == (tmp_path / "b" / f"t{suffix}").read_bytes()
    rows = json.loads((tmp_path / "a" / "t.json").read_text())
    assert rows[0]["x"] == 0.123456 and rows[0]["sv"] == [1.23457, 0.5] and rows[0]["n"] == 1


# ============================================================================ Ray
def _ray_spec(tmp_path: Path) -> Path:
    return smoke_spec(tmp_path / "s.yaml", ["random", "svd", "lora_fa"], seeds=(0, 1))


@pytest.fixture(scope="module")
def process_logs(glue, tmp_path_factory):
    """The smoke grid of the Ray tests, run by the process executor: {run_id: log}."""
    from harness.grid import run_grid
    from harness.validate import load_spec
    base = tmp_path_factory.mktemp("process")
    run_grid(load_spec(_ray_spec(base)), str(glue), "cpu", out_dir=str(base / "o"), executor="process",
             progress=False)
    return {p.stem: json.loads(p.read_text()) for p in (base / "o").glob("*.json")}


def test_ray_grid_writes_the_same_logs_as_the_process_pool(process_logs, glue, tmp_path, capsys):
    pytest.importorskip("ray")
    rc, out, err = cli(capsys, "grid", _ray_spec(tmp_path), "--data-dir", glue, "--out-dir", tmp_path / "o",
                       "--executor", "ray", "--workers", "2", "--threads", "1")
    assert rc == 0 and out.strip().endswith("6 done, 0 failed"), out + err
    logs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "o").glob("*.json")}
    assert sorted(logs) == sorted(process_logs) and len(logs) == 6
    for rid, log in logs.items():
        ref = process_logs[rid]
        assert log["config_hash"] == ref["config_hash"] and log["status"] == "ok"
        assert log["final"] == ref["final"] and log["history"]["train_loss"] == ref["history"]["train_loss"], rid
    assert not list((tmp_path / "o").glob(".*")), "temporaries or the lock left behind"


def _ray_task_pids(names: set[str]) -> list[int]:
    """Processes whose title is ``ray::<run id>``: a Ray worker running one of the grid's configs."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                title = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and title[5:].split()[0] in names:
                pids.append(int(d.name))
    return pids


def test_a_ray_worker_killed_mid_run_is_retried_and_the_grid_finishes(process_logs, glue, tmp_path,
                                                                       subprocess_env):
    pytest.importorskip("ray")
    spec, out = _ray_spec(tmp_path), tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "grid", str(spec), "--data-dir", str(glue),
                             "--out-dir", str(out), "--executor", "ray", "--workers", "2", "--threads", "1"],
                            cwd=ROOT, env=subprocess_env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 120
        while killed is None and time.time() < deadline and proc.poll() is None:
            pids = _ray_task_pids(set(process_logs))
            if pids:
                time.sleep(0.5)              # into the run: past its model build
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed is not None, "no Ray task process was seen"
    assert proc.returncode == 0 and stdout.strip().endswith("6 done, 0 failed"), stdout[-1000:] + stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(f"{rid}{k}" for rid in process_logs for k in (".json", ".safetensors")), files
    check = subprocess.run([sys.executable, "-m", "harness", "check", str(out)], cwd=ROOT, env=subprocess_env,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for rid, ref in process_logs.items():
        log = json.loads((out / f"{rid}.json").read_text())
        assert log["status"] == "ok" and log["final"] == ref["final"], rid


def test_sigterm_stops_a_ray_grid_in_one_line_and_a_rerun_finishes_it(process_logs, glue, tmp_path,
                                                                      subprocess_env):
    """The driver only notes the signal and its wait loop raises it (as with the process pool): the tasks are
    cancelled, the runs in flight logged as interrupted, and a plain rerun gives the clean run's logs."""
    pytest.importorskip("ray")
    spec, out = _ray_spec(tmp_path), tmp_path / "o"
    cmd = [sys.executable, "-m", "harness", "grid", str(spec), "--data-dir", str(glue), "--out-dir", str(out),
           "--executor", "ray", "--workers", "2", "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not _ray_task_pids(set(process_logs)) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5)                      # into the runs
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    errors = [ln for ln in re.split(r"[\r\n]", stderr) if ln.strip() and "%|" not in ln]     # less the bar
    assert proc.returncode == 128 + signal.SIGTERM, stdout[-1000:] + stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("interrupted (SIGTERM): ") and "Traceback" not in stderr, errors
    statuses = {q.stem: json.loads(q.read_text())["status"] for q in out.glob("*.json")}
    assert "interrupted" in statuses.values() and set(statuses.values()) <= {"ok", "interrupted"}, statuses
    rerun = subprocess.run(cmd, cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout.strip().endswith("6 done, 0 failed"), rerun.stdout + rerun.stderr
    for rid, ref in process_logs.items():
        log = json.loads((out / f"{rid}.json").read_text())
        assert log["status"] == "ok" and log["final"] == ref["final"], rid


def test_a_second_driver_on_the_same_directory_is_refused_in_one_line(glue, tmp_path, capsys):
    pytest.importorskip("ray")
    from harness.lock import GridLock
    out = tmp_path / "o"
    out.mkdir()
    with GridLock(out):
        rc, stdout, err = cli(capsys, "grid", _ray_spec(tmp_path), "--data-dir", glue, "--out-dir", out,
                              "--executor", "ray")
    assert rc == 2 and err.count("\n") == 1 and "another grid" in err and "is running in" in err, err
    assert not list(out.glob("*.json"))
