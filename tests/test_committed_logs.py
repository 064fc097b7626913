"""The committed results are consistent with the grid specs that made them: every log under
``logs/<grid>/`` is a config of ``configs/<grid>.yaml`` with a matching hash (a preset change that
silently orphaned logs would fail here), every config of a spec is logged, and every ok log's factor file
(unless the spec keeps none) and executed notebook (for notebook-executed grids) are committed.

Configs logged before a field existed lack it; such a field holds its legacy value (``config.LEGACY``),
which the hash leaves out, so the stored config equals the fresh one once the legacy fields are filled in."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import LEGACY, config_hash, run_id
from harness.grid import expand, load_spec

ROOT = Path(__file__).resolve().parent.parent
# Grids still filling across sessions (NOTES.md says how many runs remain): every logged run must belong to the
# spec, but configs without a log are expected.
IN_PROGRESS = {"base_sweep", "base"}
GRIDS = sorted(p.name for p in (ROOT / "logs").iterdir() if p.is_dir() and (ROOT / "configs" / f"{p.name}.yaml").is_file()) \
    if (ROOT / "logs").is_dir() else []


@pytest.mark.parametrize("grid", GRIDS)
def test_every_committed_log_belongs_to_its_grid_spec(grid):
    spec = load_spec(ROOT / "configs" / f"{grid}.yaml")
    cfgs = {run_id(c): c for c in expand(spec, ROOT / "logs" / grid, [])}     # a waiting cell has no logs yet
    logs = sorted((ROOT / "logs" / grid).glob("*.json"))
    if not logs and grid in IN_PROGRESS:
        pytest.skip(f"logs/{grid}: no run logged yet")
    assert logs, f"logs/{grid} has no logs"
    orphans = []
    for path in logs:
        log = json.loads(path.read_text())
        rid = log["run_id"]
        assert path.name == f"{rid}.json"
        if rid not in cfgs:
            orphans.append(rid)
            continue
        stored = {**{k: v for k, v in LEGACY.items() if k in cfgs[rid]}, **log["config"]}
        assert stored == cfgs[rid] and log["config_hash"] == config_hash(cfgs[rid]), rid
        if log["status"] == "ok":
            if spec.get("save_factors", True):
                assert (path.parent / log["factors_file"]).is_file(), rid
            # CPU grids run through papermill unless their spec names the in-process executor (GPU grids ran it)
            if log["env"].get("device", "cpu") == "cpu" and spec.get("executor", "notebook") == "notebook":
                assert (path.parent / f"{rid}.ipynb").is_file(), rid
        else:
            assert log["reason"], rid
    assert not orphans, f"logs/{grid}: not configs of configs/{grid}.yaml: {orphans}"
    missing = sorted(set(cfgs) - {p.stem for p in logs})
    assert not missing or grid in IN_PROGRESS, f"configs/{grid}.yaml: configs without a log: {missing[:5]}"


def test_main_lr_is_the_protocol_selected_lr_in_grids_with_lr_from():
    """A grid run at its sweep's selected lrs (lr_from) compares each method at that lr, not at an extra
    lr block of the same size (v2's seed-claim block) nor at the r = 64 lr check (ranks)."""
    from harness.analysis.runs import main_lr, runs_table
    logs = Path(__file__).resolve().parents[1] / "logs"
    if not (logs / "v2").is_dir() or not (logs / "ranks").is_dir():
        pytest.skip("committed v2/ranks logs not present")
    v2, ranks = runs_table(logs / "v2"), runs_table(logs / "ranks")
    assert main_lr(v2, "mrpc", "svd_seed") == pytest.approx(1e-2)     # not the claim block's 1e-4
    assert main_lr(v2, "mrpc", "lora_fa") == pytest.approx(3e-3)
    assert main_lr(v2, "mrpc", "random") == pytest.approx(1e-3)
    assert main_lr(ranks, "mrpc", "lora_fa_svd") == pytest.approx(3e-3)   # not the r = 64 check's 1e-3


def test_init_pull_step_2_runs_the_arm_the_rule_chose():
    """configs/init_pull.yaml runs each method at a = 0 and at the a its sweep's logs choose (the seed project's
    0.05 where the rule keeps 0), at the sweep's learning rate."""
    from harness.analysis import init_pull as ip
    sweep = ROOT / "logs" / "init_pull_sweep"
    if not any(sweep.glob("*.json")):
        pytest.skip("logs/init_pull_sweep: no run logged yet")
    step1, step2 = (load_spec(ROOT / "configs" / f"{n}.yaml") for n in ("init_pull_sweep", "init_pull"))
    arms = {("mrpc", m): (sorted(b["vary"]["init_pull"]), b["overrides"]) for b in step2["blocks"] for m in b["methods"]}
    lrs = {("mrpc", m): b["overrides"] for b in step1["blocks"] for m in b["methods"]}
    assert arms == {k: ([0.0, a or ip.SEED_PROJECT_A], lrs[k]) for k, a in ip.chosen_pulls(sweep).items()}
