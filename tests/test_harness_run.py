"""Tests of one training run (``harness.train.run``) and of the resumable papermill grid.

Everything uses the ``smoke`` preset (a tiny RoBERTa built from a config, no downloads) on the
synthetic fixture, with few examples and one or two epochs, so a run takes a few seconds.
The grid tests run ``python -m harness grid`` as a subprocess, kill it, and restart it.
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
import torch
import yaml
from safetensors.torch import load_file

import lora
from harness.config import config_hash, make_config, run_id
from harness.data import SPLITS
from harness.grid import expand, load_spec, notebook_parameters
from harness.logs import REQUIRED, read_log
from harness.steps import cpu_model

pytestmark = pytest.mark.usefixtures("hf_offline")

# 32 training examples, batch 8: 4 steps an epoch, 8 in all; dev evaluated at steps 0, 2, 4, 6, 8.
SMALL = dict(max_train_examples=32, epochs=2)
LAYERS = {f"roberta.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(glue_fixture, tmp_path_factory):
    """A few in-process runs shared by the tests below: {name: (cfg, log, out_dir)}."""
    from harness.train import run
    torch.set_num_threads(1)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("GIT_OPTIONAL_LOCKS", "0")
        mp.delenv("GLUE_DIR", raising=False)
        for name, method, seed in [("a", "svd", 0), ("b", "svd", 0), ("c", "svd", 1), ("full", "full", 0)]:
            cfg = make_config("mrpc", method, "smoke", seed=seed, **SMALL)
            d = tmp_path_factory.mktemp(f"run_{name}")
            out[name] = (cfg, run(cfg, d, glue_fixture, device="cpu", progress=False), d)
    return out


# ----------------------------------------------------------------------------- one run
def test_same_seed_same_log_and_factors(runs):
    (cfg, a, da), (_, b, db) = runs["a"], runs["b"]
    assert a["status"] == b["status"] == "ok"
    assert a["run_id"] == b["run_id"] and a["config_hash"] == b["config_hash"]
    assert len(a["history"]["train_loss"]) == 8
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    assert a["history"]["evals"] == b["history"]["evals"]
    assert a["final"] == b["final"] and a["best"] == b["best"]
    # the logs on disk too (JSON round trip of the floats is exact)
    assert read_log(da / f"{a['run_id']}.json")["history"] == read_log(db / f"{b['run_id']}.json")["history"]
    fa, fb = load_file(str(da / a["factors_file"])), load_file(str(db / b["factors_file"]))
    assert set(fa) == set(fb) and len(fa) >= 2 * len(LAYERS)
    for k in fa:
        assert torch.equal(fa[k], fb[k]), k


def test_other_seed_other_losses(runs):
    (_, a, _), (cfg_c, c, _) = runs["a"], runs["c"]
    assert c["status"] == "ok" and cfg_c["seed"] == 1
    assert c["run_id"] != a["run_id"] and c["config_hash"] != a["config_hash"]
    assert len(c["history"]["train_loss"]) == len(a["history"]["train_loss"])
    assert c["history"]["train_loss"] != a["history"]["train_loss"]


def test_log_is_complete(runs, glue_fixture):
    cfg, log, d = runs["a"]
    path = d / f"{run_id(cfg)}.json"
    disk = read_log(path)
    assert disk is not None and all(k in disk for k in REQUIRED)
    assert disk["run_id"] == run_id(cfg) == log["run_id"]
    assert disk["status"] == "ok" and disk["reason"] is None
    assert disk["config"] == cfg
    assert disk["config_hash"] == config_hash(cfg) == config_hash(disk["config"])
    # where the data came from: the fixture files and their sha256
    data = disk["data"]
    assert data["kind"] == "local" and Path(data["dir"]) == glue_fixture.resolve()
    assert data["files"] == {f"MRPC/{s}.tsv": sha256(glue_fixture / "MRPC" / f"{s}.tsv") for s in SPLITS}
    assert (data["n_train"], data["n_dev"]) == (32, 48)
    # the schedule: 4 steps an epoch, evaluated at the init and twice an epoch
    assert disk["steps"] == 8 == len(disk["history"]["train_loss"]) and disk["steps_per_epoch"] == 4
    evals = disk["history"]["evals"]
    assert [e["step"] for e in evals] == [0, 2, 4, 6, 8]
    assert [e["epoch"] for e in evals] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert all(set(e) == {"step", "epoch", "accuracy", "f1"} for e in evals)
    assert disk["final"] == evals[-1]
    assert disk["best"]["accuracy"] == max(e["accuracy"] for e in evals)
    assert disk["task"] == {"name": "mrpc", "main_metric": "accuracy", "num_labels": 2,
                            "majority_baseline": {"accuracy": 0.5, "f1": 0.0}}   # 24/24 dev labels: predicts 0
    assert 0 < disk["params"]["trainable"] < disk["params"]["total"]
    assert disk["wall_time_s"] > 0 and disk["peak_memory_bytes"] > 0
    assert {"python", "torch", "transformers", "device", "git_commit"} <= set(disk["env"])
    assert disk["env"]["device"] == "cpu"
    assert disk["env"]["cpu"] == cpu_model() and disk["env"]["threads"] == torch.get_num_threads()
    # the adapter factors, readable without the model
    assert disk["factors_file"] == f"{run_id(cfg)}.safetensors"
    factors = lora.load_delta_factors(d / disk["factors_file"])
    assert set(factors) == LAYERS
    for B, A in factors.values():        # svd init: ΔW = s·[B, −B₀]·[A; A₀], width 2r
        assert B.shape == (32, 2 * cfg["rank"]) and A.shape == (2 * cfg["rank"], 32)
        assert torch.isfinite(B).all() and torch.isfinite(A).all()
        assert (B @ A).norm() > 0                 # training moved the adapter away from ΔW = 0
    conf = lora.read_lora_config(d / disk["factors_file"])
    assert {c["rank"] for c in conf.values()} == {cfg["rank"]} and {c["init"] for c in conf.values()} == {"svd"}
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*.tmp"))


def test_full_finetuning_log_and_delta_factors(runs):
    cfg, log, d = runs["full"]
    assert log["status"] == "ok" and cfg["lr"] == 2e-3 and cfg["rank"] is None
    assert re.fullmatch(r"mrpc-full-lr2e-3-s0-[0-9a-f]{8}", log["run_id"])
    assert log["params"]["trainable"] == log["params"]["total"]
    factors = lora.load_delta_factors(d / log["factors_file"])
    assert set(factors) == LAYERS
    conf = lora.read_lora_config(d / log["factors_file"])
    for name, (B, A) in factors.items():
        assert B.shape == (32, 32) and A.shape == (32, 32)   # top-32 of a 32×32 ΔW: all of it
        assert conf[name]["init"] == "full" and conf[name]["energy_kept"] == pytest.approx(1.0)
        assert (B @ A).norm() > 0


def test_nan_loss_fails_the_run_naming_the_step(glue_fixture, tmp_path, monkeypatch):
    """The 3rd training forward returns a NaN loss: the run stops there and logs why."""
    import harness.train as train
    real = train.load_model_and_tokenizer

    def nan_on_third_step(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        forward, n = model.forward, [0]

        def patched(*a, **kw):
            out = forward(*a, **kw)
            if model.training and kw.get("labels") is not None:
                n[0] += 1
                if n[0] == 3:
                    out.loss = out.loss * float("nan")
            return out
        model.forward = patched
        return model, tok

    monkeypatch.setattr(train, "load_model_and_tokenizer", nan_on_third_step)
    cfg = make_config("mrpc", "random", "smoke", **SMALL)
    log = train.run(cfg, tmp_path, glue_fixture, device="cpu", progress=False)
    assert log["status"] == "failed"
    assert log["reason"] == "non-finite loss nan at step 3"
    assert log["steps"] == 2 and len(log["history"]["train_loss"]) == 2
    assert [e["step"] for e in log["history"]["evals"]] == [0, 2]
    assert log["factors_file"] is None and not list(tmp_path.glob("*.safetensors"))
    disk = read_log(tmp_path / f"{run_id(cfg)}.json")
    assert disk is not None and disk["status"] == "failed" and disk["reason"] == log["reason"]
    assert disk["config_hash"] == config_hash(cfg)


def test_huge_lr_diverges_and_is_logged_as_failed(glue_fixture, tmp_path):
    from harness.train import run
    # make_config refuses lr > 1 (harness/validate.py); run() still logs a run that diverges
    cfg = {**make_config("mrpc", "random", "smoke", **SMALL), "lr": 1e30}
    log = run(cfg, tmp_path, glue_fixture, device="cpu", progress=False)
    assert log["status"] == "failed"
    m = re.fullmatch(r"non-finite loss (nan|inf|-inf) at step (\d+)", log["reason"])
    assert m, log["reason"]
    assert int(m.group(2)) == log["steps"] + 1 == len(log["history"]["train_loss"]) + 1
    assert read_log(tmp_path / f"{log['run_id']}.json")["status"] == "failed"


# ----------------------------------------------------------------------------- the grid
GRID_OVERRIDES = dict(epochs=1, max_train_examples=8, evals_per_epoch=1)


def write_spec(path: Path, out_dir: Path, **keys) -> Path:
    spec = dict(name="t", preset="smoke", out_dir=str(out_dir), overrides=GRID_OVERRIDES, **keys)
    path.write_text(yaml.safe_dump(spec))
    return path


def logs_in(out: Path) -> dict[str, Path]:
    return {p.stem: p for p in out.glob("*.json") if not p.name.startswith(".")}


def status_counts(stdout: str) -> dict[str, int]:
    """The last line of ``python -m harness status``: '3 done, 1 todo' → {'done': 3, 'todo': 1}."""
    last = stdout.strip().splitlines()[-1]
    return {k: int(n) for n, k in re.findall(r"(\d+) (done|failed|todo)", last)}


def test_notebook_parameters_rebuild_the_config():
    spec = dict(preset="smoke", tasks=["mrpc", "cola"], methods=["full", "svd"], seeds=[0, 1],
                overrides=dict(GRID_OVERRIDES, lr="1e-3"))
    configs = expand(spec)
    assert len(configs) == 8 and len({config_hash(c) for c in configs}) == 8
    for cfg in configs:
        p = notebook_parameters(cfg)
        rebuilt = make_config(p["task"], p["method"], p["preset"], seed=p["seed"], **p["overrides"])
        assert rebuilt == cfg and config_hash(rebuilt) == config_hash(cfg)
    assert expand({**spec, "seeds": [0, 1, 0]}) == configs         # duplicates run once


def status_in_process(spec_path, capsys) -> tuple[dict[str, int], str]:
    from harness.__main__ import main
    capsys.readouterr()
    assert main(["status", str(spec_path)]) == 0
    stdout = capsys.readouterr().out
    return status_counts(stdout), stdout


def test_grid_killed_and_restarted_completes(tmp_path, subprocess_env, repo_root, capsys, monkeypatch):
    """1 task × 2 methods × 2 seeds on MRPC, plus one RTE run whose files are missing (its notebook
    fails).  The grid is SIGKILLed after its first log and restarted from another directory with
    relative paths; the restart skips what is logged, logs the failure with its reason, goes on, and
    ends with one valid log per run."""
    from harness.fixtures import write_fixture
    glue = write_fixture(tmp_path / "glue", tasks=("mrpc",))
    out = tmp_path / "out"
    spec_path = write_spec(tmp_path / "grid.yaml", out, tasks=["mrpc"], methods=["random", "svd"],
                           blocks=[{"seeds": [0]}, {"tasks": ["rte"], "methods": ["random"], "seeds": [0]},
                                   {"seeds": [1]}])
    configs = expand(load_spec(spec_path))
    expected = {run_id(c): c for c in configs}
    assert [(c["task"], c["method"], c["seed"]) for c in configs] == [
        ("mrpc", "random", 0), ("mrpc", "svd", 0), ("rte", "random", 0), ("mrpc", "random", 1), ("mrpc", "svd", 1)]
    rte_id = run_id(configs[2])
    assert status_in_process(spec_path, capsys)[0] == {"todo": 5}

    import psutil
    cmd = [sys.executable, "-m", "harness", "grid", str(spec_path), "--data-dir", str(glue)]
    with open(tmp_path / "grid1.out", "w") as f:
        proc = subprocess.Popen(cmd, cwd=repo_root, env=subprocess_env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    kernels = []
    try:
        deadline = time.time() + 150
        while not logs_in(out):
            assert proc.poll() is None, (tmp_path / "grid1.out").read_text()[-3000:]
            assert time.time() < deadline, "no log within 150 s"
            time.sleep(0.1)
        kernels = psutil.Process(proc.pid).children(recursive=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)          # the grid and whatever shares its process group
        proc.wait()
        # the kernel runs in its own session and exits within a second of its parent (ipykernel's
        # parent poller); wait for it so that it cannot write a log behind the restarted grid
        _, alive = psutil.wait_procs(kernels, timeout=20)
        for p in alive:
            p.kill()
    assert proc.returncode == -signal.SIGKILL

    # after the kill: every log on disk is complete (temporary files may be left)
    first = logs_in(out)
    assert first and set(first) <= set(expected) and rte_id not in first
    for rid, p in first.items():
        log = json.loads(p.read_text())
        assert read_log(p) == log and log["status"] == "ok" and log["config_hash"] == config_hash(expected[rid])
    before = {rid: (p.stat().st_mtime_ns, p.read_bytes()) for rid, p in first.items()}
    # a kill between a run's log and its notebook's rename leaves the executed notebook hidden: the
    # restart must keep it as the run's record, not delete it as debris
    kept = next(iter(first))
    if (out / f"{kept}.ipynb").exists():
        os.replace(out / f"{kept}.ipynb", out / f".{kept}.tmp.ipynb")
    assert (out / f".{kept}.tmp.ipynb").is_file()
    # a kill in the middle of writing a log leaves a hidden temporary file: never read as a log
    todo_ids = [r for r in expected if r not in first]
    (out / f".{todo_ids[0]}.json.tmp").write_text('{"run_id": "' + todo_ids[0])
    (out / f"{todo_ids[0]}.safetensors.tmp").write_bytes(b"\0" * 10)

    counts, stdout = status_in_process(spec_path, capsys)
    assert counts == {"done": len(first), "todo": 5 - len(first)}
    for rid in expected:
        assert re.search(rf"^{'done' if rid in first else 'todo'}\s+{re.escape(rid)}$", stdout, re.M)

    # restart (the CLI in this process: the kernels are subprocesses anyway), from another directory
    # with relative paths, which are taken from the study's root ($STUDY_ROOT here): runs only what is missing
    from harness.__main__ import main
    monkeypatch.chdir(glue)
    monkeypatch.setenv("STUDY_ROOT", str(tmp_path))
    capsys.readouterr()
    rc = main(["grid", "grid.yaml", "--data-dir", "glue"])
    stdout, stderr = capsys.readouterr()
    assert Path.cwd() == glue                                              # the CLI gives the cwd back
    monkeypatch.delenv("STUDY_ROOT")
    monkeypatch.chdir(repo_root)
    assert rc == 1, stdout[-3000:] + stderr[-3000:]                        # 1: a run failed
    assert f"5 runs, {len(first)} already logged, {5 - len(first)} to run" in stdout
    assert stdout.strip().splitlines()[-1] == "4 done, 1 failed"
    assert "Traceback" not in stderr

    final = logs_in(out)
    assert set(final) == set(expected)                           # one log per run id, nothing else
    hashes = []
    for rid, p in final.items():
        log = read_log(p)
        assert log is not None and log["run_id"] == rid and log["config_hash"] == config_hash(expected[rid])
        assert log["status"] == ("failed" if rid == rte_id else "ok"), rid
        if rid != rte_id:
            assert (out / log["factors_file"]).is_file()
            assert Path(log["data"]["dir"]) == glue.resolve()    # the relative --data-dir, from the caller's cwd
        hashes.append(log["config_hash"])
    assert len(set(hashes)) == len(hashes) == 5
    for rid, (mtime, content) in before.items():                 # skipped, not rerun
        assert (out / f"{rid}.json").stat().st_mtime_ns == mtime and (out / f"{rid}.json").read_bytes() == content
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert f"kept the executed notebook of {kept}" in stdout
    for rid in expected:
        assert (out / f"{rid}.ipynb").is_file(), rid                 # every run keeps its executed notebook
    assert not (out / ".grid.lock").exists()

    # the failed run: a log naming the missing file; the grid went on to the runs after it
    failed = read_log(out / f"{rte_id}.json")
    assert failed["final"] is None and "UserError" in failed["reason"]
    assert str(glue.resolve() / "RTE" / "train.tsv") in failed["reason"]
    assert (out / f"{rte_id}.ipynb").is_file()                   # the failed notebook is kept to read
    assert todo_ids.index(rte_id) < len(todo_ids) - 1

    counts, stdout = status_in_process(spec_path, capsys)
    assert counts == {"done": 4, "failed": 1}
    assert re.search(rf"^failed\s+{re.escape(rte_id)}$", stdout, re.M)

    # the executed notebook beside each log the restart ran: parameters cell, then the injected one
    for rid in todo_ids:
        nb = json.loads((out / f"{rid}.ipynb").read_text())
        tags = [c.get("metadata", {}).get("tags", []) for c in nb["cells"]]
        i_par = next(i for i, t in enumerate(tags) if "parameters" in t)
        i_inj = next(i for i, t in enumerate(tags) if "injected-parameters" in t)
        assert i_inj == i_par + 1
        injected = "".join(nb["cells"][i_inj]["source"])
        cfg = expected[rid]
        assert f'task = "{cfg["task"]}"' in injected and f'method = "{cfg["method"]}"' in injected
        assert f"seed = {cfg['seed']}" in injected
        assert f'out_dir = "{out}"' in injected and f'data_dir = "{glue}"' in injected
        assert '"max_train_examples": 8' in injected
        if rid != rte_id:
            outputs = json.dumps([c.get("outputs", []) for c in nb["cells"]])
            assert rid in outputs                                # show_run printed this run's result
