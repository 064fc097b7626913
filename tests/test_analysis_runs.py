"""harness.analysis.runs: a grid's logs are read once and re-read when a file changes; the lr a figure pools."""
from __future__ import annotations

import pandas as pd

from harness.analysis import runs as ar
from harness.logs import write_json_atomic
from test_analysis_spectra import make_log


def test_load_logs_reads_a_directory_once_and_again_after_a_change(tmp_path, monkeypatch):
    write_json_atomic(tmp_path / "a.json", make_log("mrpc", "random", 0))
    calls = []
    real = ar.read_logs
    monkeypatch.setattr(ar, "read_logs", lambda d, status="ok": calls.append(d) or real(d, status=status))
    first = ar.load_logs(tmp_path)
    assert ar.load_logs(tmp_path) == first and len(calls) == 1                  # cached
    assert [lg["config"]["task"] for lg in ar.load_logs(tmp_path, task="rte")] == [] and len(calls) == 1
    write_json_atomic(tmp_path / "b.json", make_log("rte", "random", 0))
    assert len(ar.load_logs(tmp_path)) == 2 and len(calls) == 2               # a new file: read again


def test_main_lr_rows_keep_each_method_at_its_main_lr():
    runs = pd.DataFrame([dict(task="mrpc", method=m, lr=lr, preset="quick", seed=s)
                         for m, lr in (("random", 1e-3), ("random", 1e-4), ("svd", 1e-4)) for s in range(2)])
    table = runs.assign(x=range(len(runs)))
    kept = ar.main_lr_rows(table, runs)
    assert set(zip(kept["method"], kept["lr"])) == {("random", 1e-3), ("svd", 1e-4)}   # svd: its only lr


def test_describe_lrs_names_the_lr_of_each_method():
    logs = [make_log("mrpc", "random", 0, lr=1e-3), make_log("mrpc", "svd", 0, lr=3e-4)]
    assert ar.describe_lrs(logs) == "lr: random 0.001, svd 0.0003"
    assert ar.describe_lrs(logs[:1]) == "lr 0.001 for every method"
