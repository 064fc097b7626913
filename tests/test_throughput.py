"""The throughput levers keep the grid's guarantees: with two worker processes no config runs twice, a
worker killed with SIGKILL leaves only complete logs and a grid that the same command finishes, the
``precision`` field names new runs without renaming round 1's, and an interrupted run is run again.

Everything uses the ``smoke`` preset (tiny RoBERTa) on the synthetic fixture, at most 2 workers × 1 thread.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from harness.config import LEGACY, config_hash, make_config, run_id
from harness.grid import expand, failure_log, load_spec, run_grid
from harness.logs import read_log, write_json_atomic

pytestmark = pytest.mark.usefixtures("hf_offline")

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(epochs=1, max_train_examples=16, evals_per_epoch=1)       # 2 steps of 8: ~1 s a run

# Loaded by every new interpreter whose PYTHONPATH starts with its directory (the grid's spawned workers):
# each log write is appended, with the writer's pid, to $THROUGHPUT_TEST_COUNTER.  harness.grid and
# harness.train import write_json_atomic from harness.logs by name, after this has replaced it.
SITECUSTOMIZE = '''
import os
_counter = os.environ.get("THROUGHPUT_TEST_COUNTER")
if _counter:
    import harness.logs as _logs
    _write = _logs.write_json_atomic

    def write_json_atomic(path, obj):
        out = _write(path, obj)
        status = obj.get("status") if isinstance(obj, dict) else None
        fd = os.open(_counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {os.path.basename(str(path))} {status}\\n".encode())
        finally:
            os.close(fd)
        return out
    _logs.write_json_atomic = write_json_atomic
'''


def logs_in(out: Path) -> dict[str, Path]:
    return {p.stem: p for p in out.glob("*.json") if not p.name.startswith(".")}


def smoke_spec(**keys) -> dict:
    return {**dict(name="tp", preset="smoke", tasks=["mrpc"], methods=["random", "svd"], overrides=TINY), **keys}


# ----------------------------------------------------------------------------- (a) no config twice
def test_two_workers_run_every_config_exactly_once(glue_fixture, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    counter = tmp_path / "writes.txt"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("THROUGHPUT_TEST_COUNTER", str(counter))
    spec = smoke_spec(seeds=[0, 1, 2])
    configs = expand(spec)
    assert len(configs) == 6
    out = tmp_path / "out"

    result = run_grid(spec, str(glue_fixture), "cpu", progress=False, out_dir=str(out), workers=2,
                      executor="process", threads=1)

    assert result == {run_id(c): "done" for c in configs}
    writes = [ln.split() for ln in counter.read_text().splitlines()]
    # one log write per config, every one by a worker (not this process), at most two workers
    assert Counter(name for _, name, _ in writes) == Counter(f"{run_id(c)}.json" for c in configs)
    assert {st for *_, st in writes} == {"ok"}
    pids = {int(pid) for pid, *_ in writes}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert set(logs_in(out)) == {run_id(c) for c in configs}
    for c in configs:
        log = read_log(out / f"{run_id(c)}.json")
        assert log is not None and log["status"] == "ok" and log["config_hash"] == config_hash(c)
        assert log["env"]["threads"] == 1 and log["finished_at"]
    # a second call finds everything logged and runs nothing
    counter.unlink()
    again = run_grid(spec, str(glue_fixture), "cpu", progress=False, out_dir=str(out), workers=2,
                     executor="process", threads=1)
    assert again == result and not counter.exists()


# ----------------------------------------------------------------------------- (b) kill -9 a worker
def _workers(grid_pid: int) -> list:
    """The grid's pool workers (spawned interpreters), not multiprocessing's resource tracker."""
    import psutil
    try:
        kids = psutil.Process(grid_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            out.append(p)
    return out


def test_killed_worker_leaves_valid_logs_and_the_grid_resumes(glue_fixture, tmp_path, subprocess_env, capsys):
    import psutil
    out = tmp_path / "out"
    spec_path = tmp_path / "grid.yaml"
    # longer runs (64 examples, 2 epochs) so that the kill lands in the middle of one
    spec_path.write_text(yaml.safe_dump(smoke_spec(seeds=[0, 1, 2], out_dir=str(out),
                                                   overrides=dict(epochs=2, max_train_examples=64,
                                                                  evals_per_epoch=2))))
    configs = {run_id(c): c for c in expand(load_spec(spec_path))}
    cmd = [sys.executable, "-m", "harness", "grid", str(spec_path), "--data-dir", str(glue_fixture),
           "--workers", "2", "--executor", "process", "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    started, victim = [], None
    try:
        deadline = time.time() + 120
        while not logs_in(out):                    # the pool is up and has finished a run: others are in flight
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no log within 120 s"
            time.sleep(0.05)
        started = _workers(proc.pid)
        assert 1 <= len(started) <= 2, started
        victim = started[0]
        victim.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _, alive = psutil.wait_procs(started, timeout=20)     # the grid terminates the other worker
        for p in alive:
            p.kill()
    assert not alive, f"workers outlived the grid: {alive}"

    # the grid stops with one error line (exit 2, no traceback)
    assert proc.returncode == 2, stdout[-2000:] + stderr[-2000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "a grid worker died" in errors[0] and "run the same grid command again" in errors[0]
    assert "Traceback" not in stderr
    # every log on disk is complete: finished runs ok, the run stopped by the grid says interrupted
    first = logs_in(out)
    assert first and set(first) < set(configs)
    statuses = {}
    for rid, p in first.items():
        log = read_log(p)
        assert log is not None and log["config_hash"] == config_hash(configs[rid]), rid
        statuses[rid] = log["status"]
    assert set(statuses.values()) <= {"ok", "interrupted"}
    ok_before = {rid: p.read_bytes() for rid, p in first.items() if statuses[rid] == "ok"}

    # the same command finishes the grid: interrupted and missing runs run, ok ones are kept
    from harness.__main__ import main
    capsys.readouterr()
    rc = main(cmd[3:])
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stdout[-3000:] + stderr[-3000:]
    assert f"{len(configs)} runs, {len(ok_before)} already logged, {len(configs) - len(ok_before)} to run" in stdout
    assert stdout.strip().splitlines()[-1] == f"{len(configs)} done, 0 failed"
    final = logs_in(out)
    assert set(final) == set(configs)
    for rid, p in final.items():
        log = read_log(p)
        assert log is not None and log["status"] == "ok" and log["config_hash"] == config_hash(configs[rid])
    for rid, content in ok_before.items():
        assert (out / f"{rid}.json").read_bytes() == content
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not (out / ".grid.lock").exists()


# ----------------------------------------------------------------------------- (c) the precision field's hash
def test_precision_names_a_new_run_and_round_one_keeps_its_hashes():
    fp32 = make_config("mrpc", "random", "quick", seed=0)
    explicit = make_config("mrpc", "random", "quick", seed=0, precision="fp32")
    bf16 = make_config("mrpc", "random", "quick", seed=0, precision="bf16")
    assert fp32["precision"] == "fp32" and explicit == fp32
    assert config_hash(explicit) == config_hash(fp32)
    assert config_hash(bf16) != config_hash(fp32) and run_id(bf16) != run_id(fp32)
    assert {k for k in fp32 if fp32[k] != bf16[k]} == {"precision"}
    # the hash leaves out a legacy field at its legacy value and only then
    canon = lambda c: json.dumps({k: v for k, v in c.items() if k != "precision"}, sort_keys=True)
    assert canon(fp32) == canon(bf16)

    # round 1's committed grid: every config of configs/quick.yaml (made today, with precision "fp32")
    # still has the run id and hash of its committed log, so the grid sees it as done
    quick = ROOT / "logs" / "quick"
    if not quick.is_dir():
        pytest.skip("logs/quick not committed here")
    committed = {p.stem: json.loads(p.read_text()) for p in quick.glob("*.json")}
    configs = {run_id(c): c for c in expand(load_spec(ROOT / "configs" / "quick.yaml"))}
    assert set(configs) == set(committed) and len(configs) == 66
    for rid, cfg in configs.items():
        assert cfg["precision"] == LEGACY["precision"]
        assert committed[rid]["config_hash"] == config_hash(cfg), rid
    assert all("precision" not in lg["config"] for lg in committed.values())    # logged before the field


def test_dropout_mask_names_a_new_run():
    torch_mask = make_config("mrpc", "random", "quick", seed=0)
    int16 = make_config("mrpc", "random", "quick", seed=0, dropout_mask="int16")
    assert torch_mask["dropout_mask"] == LEGACY["dropout_mask"] == "torch"
    assert config_hash(make_config("mrpc", "random", "quick", seed=0, dropout_mask="torch")) == config_hash(torch_mask)
    assert config_hash(int16) != config_hash(torch_mask) and run_id(int16) != run_id(torch_mask)
    assert {k for k in torch_mask if torch_mask[k] != int16[k]} == {"dropout_mask"}
    # full fine-tuning keeps the legacy value (like rslora), so round 1's full runs keep their hashes
    assert make_config("mrpc", "full", "quick")["dropout_mask"] == "torch"


# ----------------------------------------------------------------------------- (d) interrupted → rerun
def test_an_interrupted_log_is_run_again_by_a_plain_grid_call(glue_fixture, tmp_path):
    spec = smoke_spec(seeds=[0])
    interrupted, failed = expand(spec)
    out = tmp_path / "out"
    out.mkdir()
    write_json_atomic(out / f"{run_id(interrupted)}.json",
                      failure_log(interrupted, "interrupted (SIGTERM)", 1.5, "interrupted"))
    write_json_atomic(out / f"{run_id(failed)}.json", failure_log(failed, "RuntimeError: boom", 2.0))
    failed_bytes = (out / f"{run_id(failed)}.json").read_bytes()
    assert read_log(out / f"{run_id(interrupted)}.json")["status"] == "interrupted"

    result = run_grid(spec, str(glue_fixture), "cpu", progress=False, out_dir=str(out), executor="process")

    assert result == {run_id(interrupted): "done", run_id(failed): "failed"}
    log = read_log(out / f"{run_id(interrupted)}.json")
    assert log["status"] == "ok" and log["final"] is not None and log["config_hash"] == config_hash(interrupted)
    assert (out / f"{run_id(failed)}.json").read_bytes() == failed_bytes     # failed: only with --retry-failed


def test_bf16_on_a_cpu_without_native_bf16_warns_once_in_one_line(monkeypatch, capsys):
    import torch

    from harness import grid
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    grid._warn_slow_bf16([{"precision": "bf16"}, {"precision": "bf16"}], "cpu")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "without native bf16" in out and "precision: fp32" in out
    grid._warn_slow_bf16([{"precision": "fp32"}], "cpu")           # fp32 runs: nothing to say
    grid._warn_slow_bf16([{"precision": "bf16"}], "cuda")          # not a CPU: nothing to say
    assert capsys.readouterr().out == ""
