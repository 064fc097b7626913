"""Tests of harness.analysis.runs / .spectra / .weights and harness.plots: tables (numbers against numpy), spectra (against dense numpy SVDs of the
products), and build_all end to end on a small grid (figures and captions in the manifest).

The grid is built once per session: hand-made logs whose factor files come from the real tiny-roberta
of the smoke preset (built as harness.train.run builds it, then adapters with perturbed factors), one
real 1-epoch training run, and one failed log.  No downloads; a few seconds on a CPU.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lora
from harness.analysis import runs as ar
from harness.analysis import spectra as asp
from harness.analysis import weights as aw
from harness.logs import write_json_atomic
from harness.plots import build, style, training

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- hand-made logs
def make_log(task="mrpc", method="random", seed=0, final=None, lr=5e-4, status="ok", reason=None,
             main="accuracy", n_evals=4, steps_per_epoch=4, epochs=2, baseline=0.5, factors_file=None,
             **cfg_over):
    """A log dict with the fields harness.train.run writes; ``final``: {metric: value or None}."""
    from harness.config import make_config, run_id
    cfg = make_config(task, method, "smoke", seed=seed, lr=lr, epochs=epochs, **cfg_over)
    rid = run_id(cfg)
    final = final or {main: 0.5}
    evals = [{"step": i * steps_per_epoch * epochs // (n_evals - 1), "epoch": i * epochs / (n_evals - 1),
              **{k: (None if v is None else v * (i + 1) / n_evals) for k, v in final.items()}} for i in range(n_evals)]
    evals[-1].update(final)
    steps = steps_per_epoch * epochs
    good = status == "ok"
    return {
        "run_id": rid, "status": status, "reason": reason, "config": cfg, "config_hash": "0" * 64,
        "task": {"name": task, "main_metric": main, "num_labels": 2, "majority_baseline": {main: baseline}},
        "data": {"kind": "local", "dir": "/nonexistent", "n_train": 96, "n_dev": 48},
        "steps": steps if good else 1, "steps_per_epoch": steps_per_epoch,
        "history": {"train_loss": [1.0 / (1 + i) for i in range(steps)], "evals": evals},
        "final": evals[-1] if good else None,
        "best": max(evals, key=lambda e: -1 if e[main] is None else e[main]) if good else None,
        "params": {"trainable": 1000, "total": 100000},
        "factors_file": factors_file if good else None, "wall_time_s": 1.5, "peak_memory_bytes": 1,
        "env": {}, "finished_at": "2026-01-01T00:00:00",
    }


def write_logs(d: Path, logs) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for lg in logs:
        write_json_atomic(d / f"{lg['run_id']}.json", lg)
    return d


FINALS = {("random", 0): 0.80, ("random", 1): 0.84, ("random", 2): 0.79,
          ("svd", 0): 0.70, ("svd", 1): 0.75, ("svd", 2): 0.72}
F1 = {("random", 0): 0.86, ("random", 1): 0.88, ("random", 2): None,      # one NaN metric
      ("svd", 0): 0.81, ("svd", 1): 0.80, ("svd", 2): 0.83}


@pytest.fixture()
def table_dir(tmp_path):
    logs = [make_log("mrpc", m, s, final={"accuracy": FINALS[m, s], "f1": F1[m, s]}) for (m, s) in FINALS]
    logs.append(make_log("rte", "random", 0, final={"accuracy": 0.61}))                  # a single seed
    logs.append(make_log("mrpc", "lora_fa", 0, status="failed", reason="non-finite loss nan at step 3"))
    return write_logs(tmp_path / "tables", logs), logs


def test_summary_table_mean_std(table_dir, tmp_path):
    d, logs = table_dir
    runs = ar.runs_table(d)
    assert len(runs) == 7 and "lora_fa" not in set(runs["method"])
    failed = ar.failed_runs(d)
    assert list(failed["run_id"]) == [logs[-1]["run_id"]]
    assert failed["reason"].iloc[0] == "non-finite loss nan at step 3"

    out = tmp_path / "figs"
    s = ar.summary_table(d)
    style.write_table(s, out, "summary_tables")
    assert "lr" not in s.columns                      # one lr per (task, method): not a grouping key
    assert (out / "summary_tables.csv").is_file() and (out / "summary_tables.json").is_file()
    for m in ("random", "svd"):
        row = s[(s.task == "mrpc") & (s.method == m)].iloc[0]
        v = np.array([FINALS[m, k] for k in range(3)])
        assert row["n"] == 3 and row["runs"] == 3
        assert row["mean"] == pytest.approx(v.mean(), abs=1e-12)
        assert row["std"] == pytest.approx(v.std(ddof=1), abs=1e-12)
        assert row["summary"] == f"{v.mean():.3f} ± {v.std(ddof=1):.3f} (n=3)"
        assert row["accuracy_mean"] == pytest.approx(v.mean(), abs=1e-12)
        f1 = np.array([x for x in (F1[m, k] for k in range(3)) if x is not None])
        assert row["f1_n"] == len(f1) and row["f1_mean"] == pytest.approx(f1.mean(), abs=1e-12)
        assert row["f1_std"] == pytest.approx(f1.std(ddof=1), abs=1e-12)
    assert s[(s.task == "mrpc") & (s.method == "random")].iloc[0]["f1"] == "0.870 ± 0.014 (n=2)"
    rte = s[s.task == "rte"].iloc[0]
    assert rte["n"] == 1 and math.isnan(rte["std"]) and rte["summary"] == "0.610 (n=1)"
    back = json.loads((out / "summary_tables.json").read_text())
    assert len(back) == 3 and back[0]["task"] == "mrpc"


def test_summary_groups_by_lr_and_lr_figures(tmp_path):
    vals = {(1e-3, 0): 0.6, (1e-3, 1): 0.7, (3e-3, 0): 0.8, (3e-3, 1): 0.9}
    logs = [make_log("cola", "random", s, lr=lr, main="mcc", final={"mcc": v, "accuracy": 0.7})
            for (lr, s), v in vals.items()]
    single = make_log("cola", "svd", 0, lr=1e-3, main="mcc", final={"mcc": 0.5, "accuracy": 0.7})  # one lr only
    d = write_logs(tmp_path / "sweep", [*logs, single])
    s = ar.summary_table(d)
    s = s[s["method"] == "random"]
    assert list(s["lr"]) == [1e-3, 3e-3]
    assert list(s["mean"]) == pytest.approx([0.65, 0.85])
    assert s["summary"].iloc[0] == "0.650 ± 0.071 (n=2)"
    man = training.lr_sweep_figure(d, tmp_path / "figs")
    assert set(man) == {"lr_sweep", "lr_curves"}
    for e in man.values():   # the lr figures show only methods run at several learning rates
        assert Path(e["path"]).stat().st_size > 5000 and "4 runs" in e["caption"]
        assert sorted(e["runs"]) == sorted(lg["run_id"] for lg in logs)


# ----------------------------------------------------------------------------- factor files on tiny-roberta
def build_adapted(cfg, data_dir, perturb_seed):
    """The base model of a run exactly as harness.train.run builds it, with adapters whose factors
    are then perturbed (a stand-in for training); returns (model, {layer: W_original})."""
    from harness.data import load_task_data
    from harness.models import load_model_and_tokenizer
    from harness.tasks import get_task
    from harness.steps import seed_everything
    task = get_task(cfg["task"])
    train = load_task_data(task, data_dir)[0]["train"]
    seed_everything(cfg["seed"])
    model, _ = load_model_and_tokenizer(cfg["model"], task.num_labels, cfg["seed"],
                                        train_texts=[t for ex in train for t in ex.texts])
    W = {n: m.weight.detach().clone() for n, m in model.named_modules()
         if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ("query", "value")}
    if cfg["method"] == "full":
        return model, W
    lora.add_lora(model, cfg["targets"], rank=cfg["rank"], alpha=cfg["alpha"], init=cfg["method"],
                  seed=cfg["seed"], keep_trainable=cfg["head"])
    g = torch.Generator().manual_seed(perturb_seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.add_(0.1 * torch.randn(layer.lora_B.shape, generator=g))
            if not layer.freeze_A:
                layer.lora_A.add_(0.05 * torch.randn(layer.lora_A.shape, generator=g))
    return model, W


@pytest.fixture(scope="session")
def grid(tmp_path_factory):
    """logs/smoke: mrpc × {full, random, svd, lora_fa} × seeds {0, 1} (hand-made logs, real factor
    files), one real 1-epoch mrpc svd run (16 examples), one failed run.  Returns (logs_root, smoke_dir, W, real)."""
    from harness.fixtures import write_fixture
    from harness.train import run
    root = tmp_path_factory.mktemp("report")
    data_dir = write_fixture(root / "glue")
    smoke = root / "logs" / "smoke"
    smoke.mkdir(parents=True)
    W_by_run = {}
    i = 0
    for method in ("full", "random", "svd", "lora_fa"):
        for seed in (0, 1):
            i += 1
            lg = make_log("mrpc", method, seed, final={"accuracy": 0.6 + 0.05 * i, "f1": 0.7}, lr=2e-2)
            lg["data"] = {"kind": "local", "dir": str(Path(data_dir).resolve()), "n_train": 96, "n_dev": 48}
            lg["factors_file"] = f"{lg['run_id']}.safetensors"
            model, W = build_adapted(lg["config"], data_dir, perturb_seed=100 + i)
            if method == "full":   # a planted dense update, stored as its top-32 (here: complete) SVD
                g = torch.Generator().manual_seed(i)
                facs = {}
                for n, w in W.items():
                    U, S, Vh = torch.linalg.svd(0.1 * torch.randn(w.shape, generator=g, dtype=torch.float64))
                    facs[n] = ((U[:, :32] * S[:32]).float(), Vh[:32].float())
                lora.save_factors(smoke / lg["factors_file"], facs, init="full",
                                  info={n: {"energy_kept": 1.0} for n in facs})
            else:
                lora.save_lora(model, smoke / lg["factors_file"])
            write_json_atomic(smoke / f"{lg['run_id']}.json", lg)
            W_by_run[lg["run_id"]] = W
    write_json_atomic(smoke / "failed.json", make_log("mrpc", "lora_fa", 7, status="failed", reason="boom"))
    from harness.config import make_config
    real = run(make_config("mrpc", "svd", "smoke", seed=0, epochs=1, max_train_examples=16), smoke, data_dir,
               device="cpu", progress=False)
    write_json_atomic(root / "logs" / "benchmark_lora.json", {"step_time_ms": {"ours": {"median": 1.0}}})
    return root / "logs", smoke, W_by_run, real


def test_spectra_table_matches_dense_numpy(grid):
    _, smoke, W_by_run, real = grid
    t = asp.spectra_table(smoke, task="mrpc")
    assert len(t) == 9 * 4 and set(t["r_ref"]) == {4}
    t = t[t.run_id != real["run_id"]]
    for _, row in t.iterrows():
        f = lora.load_delta_factors(smoke / f"{row['run_id']}.safetensors")
        B, A = (x.double().numpy() for x in f[row["layer"]])
        dW = B @ A
        S = np.linalg.svd(dW, compute_uv=False)
        sv = np.asarray(row["sv"])
        assert sv.shape == (A.shape[0],)
        np.testing.assert_allclose(sv, S[:sv.size], rtol=1e-9, atol=1e-9 * S[0])
        assert row["fro"] == pytest.approx(np.linalg.norm(dW), rel=1e-9)
        assert row["stable_rank"] == pytest.approx((S ** 2).sum() / S[0] ** 2, rel=1e-9)
        # geometry against the W rebuilt by pretrained_weights == the W the factors were made on
        W = W_by_run[row["run_id"]][row["layer"]].double().numpy()
        U, S_, Vt = np.linalg.svd(dW)
        r = 4
        Ur, Vr = U[:, :r], Vt[:r].T
        assert row["amplification"] == pytest.approx(np.linalg.norm(dW) / np.linalg.norm(Ur.T @ W @ Vr), rel=1e-6)
        Uw, _, Vwt = np.linalg.svd(W)
        assert row["overlap_right_top"] == pytest.approx((np.linalg.norm(Vr.T @ Vwt[:r].T) ** 2) / r, abs=1e-6)
        assert row["overlap_left_bottom"] == pytest.approx((np.linalg.norm(Ur.T @ Uw[:, -r:]) ** 2) / r, abs=1e-6)
        assert row["overlap_random"] == pytest.approx(r / W.shape[1])
    fa = t[t.method == "lora_fa"]
    assert len(fa) == 8 and np.allclose(fa["fa_energy"], 1.0, atol=1e-10)
    rnd = t[t.method == "random"]
    assert (rnd["fa_energy"] < 0.999).all()                         # A moved: ΔW leaves span(A0ᵀ)
    assert set(t[t.method == "svd"]["factor_rank"]) == {8}          # s·BA − s·B0A0: rank ≤ 2r
    assert (t[t.method == "full"]["trunc_energy_kept"] == 1.0).all()


def test_pretrained_weights_rebuild_real_run(grid):
    """For an svd run trained by harness.train.run, s·B0A0 is the top-r SVD of the ORIGINAL W: the
    W that pretrained_weights rebuilds must reproduce it."""
    _, smoke, _, real = grid
    assert real["status"] == "ok"
    W = aw.pretrained_weights(real, log_dir=smoke)
    cfg = lora.read_lora_config(smoke / real["factors_file"])
    raw = lora.io.load_file(str(smoke / real["factors_file"]))
    assert set(W) == set(cfg) and len(W) == 4
    for name, c in cfg.items():
        U, S, Vh = torch.linalg.svd(W[name].double())
        r = c["rank"]
        top = (U[:, :r] * S[:r]) @ Vh[:r]
        init = c["scaling"] * raw[f"{name}.lora_B0"].double() @ raw[f"{name}.lora_A0"].double()
        torch.testing.assert_close(init, top, atol=1e-5, rtol=1e-5)


def test_build_all_manifest(grid, tmp_path):
    logs_root, smoke, _, real = grid
    figs = tmp_path / "figures"
    man = build.build_all(logs_root, figs)
    assert json.loads((figs / "manifest.json").read_text()).keys() == man.keys()
    sub = json.loads((figs / "smoke" / "manifest.json").read_text())
    pngs = {k: e for k, e in sub.items() if e["path"].endswith(".png")}
    want = {f"{kind}_mrpc" for kind in ("convergence", "sv_decay", "effective_rank", "angles", "similarity")}
    assert want <= set(pngs), sorted(pngs)
    for name, e in sub.items():
        assert Path(e["path"]).is_file(), name
        if name.startswith("failed"):
            assert "boom" not in e["caption"] and "mrpc-lorafa-r4-lr5e-4-s7" in e["caption"]
            continue
        assert str(smoke) in e["caption"] and e["runs"], name
        n = len(e["runs"])
        assert f"{n} run" in e["caption"], name
        if n <= ar.MAX_IDS_IN_CAPTION:
            assert all(r in e["caption"] for r in e["runs"]), name
    for e in pngs.values():
        with open(e["path"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert real["run_id"] in sub["convergence_mrpc"]["runs"]
    failed_id = next(iter(sub["failed_smoke"]["runs"]))
    assert all(failed_id not in e["runs"] for k, e in sub.items() if k != "failed_smoke")
    assert len(sub["summary_smoke"]["runs"]) == 9
    assert (figs / "benchmark" / "benchmark_lora.csv").is_file() and "benchmark/benchmark_lora" in man
