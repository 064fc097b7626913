"""No silent loss, no stuck run: signals, corrupt logs, unusable paths and oversized inputs.

* Signals: SIGTERM and SIGINT at a random moment of a ``smoke`` grid run as a subprocess, for each executor
  (notebook, process, two workers): the grid stops within seconds with one line, the run in flight is logged
  as interrupted, and a plain rerun leaves what a clean run leaves (the same files, the same final metrics).
* Corrupt, truncated or foreign files: ``figures`` refuses them (one line per file, nothing written, and an
  all-or-nothing build), ``status`` marks them, ``grid`` will not overwrite them, ``check`` lists them.
* Paths, spec files, ``--set`` values and log contents from hypothesis: every bad one is exit 2 with one
  ``error:`` line, no traceback, and nothing created.
* Limits: a spec that expands to 10⁵ or 10⁶ configs, a YAML alias bomb, a 8 MB TSV line are refused fast.

Everything in-process goes through ``harness.__main__.main``; ``BAD_INPUTS`` counts the refusals asserted.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from harness.config import DEFAULTS, config_hash, make_config, run_id
from harness.fixtures import write_fixture
from harness.logs import REQUIRED, write_json_atomic

pytestmark = pytest.mark.usefixtures("hf_offline")

ROOT = Path(__file__).resolve().parent.parent
BAD_INPUTS = {"tried": 0, "one_line": 0}
NOISE = re.compile(r"^(\[IPKernelApp\] |grid \S+: +\d+%)")   # a kernel's start-up warnings, the progress bar


@pytest.fixture(scope="module", autouse=True)
def _report_count():
    yield
    print(f"\ntest_robustness: {BAD_INPUTS['tried']} bad inputs tried, {BAD_INPUTS['one_line']} gave exit 2 "
          f"with one error line")


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("glue"), tasks=("mrpc", "cola"))


def cli(capsys, *args) -> tuple[int, str, str]:
    from harness.__main__ import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def tree(d: Path) -> set:
    return {(str(p.relative_to(d)), p.is_dir()) for p in d.rglob("*")}


def refused(rc: int, out: str, err: str, *needles: str) -> str:
    """Exit 2, one ``error:`` line on stderr (with ``needles``), nothing on stdout, no traceback."""
    BAD_INPUTS["tried"] += 1
    lines = err.splitlines()
    assert "Traceback" not in err + out
    assert rc == 2, (rc, err[-500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert len(lines[0]) <= 1100 and out == ""
    for n in needles:
        assert n in lines[0], (n, lines[0])
    BAD_INPUTS["one_line"] += 1
    return lines[0]


def smoke_spec(path: Path, **keys) -> Path:
    spec = {"preset": "smoke", "tasks": ["mrpc"], "methods": ["random"], "seeds": [0], "executor": "process", **keys}
    path.write_text(yaml.safe_dump(spec))
    return path


def run_log(seed: int = 0, **change) -> dict:
    """A complete ok run log (what harness.train.run writes, metrics made up) whose hash and id are its config's."""
    cfg = make_config("mrpc", "random", "smoke", seed=seed)
    evals = [{"step": s, "epoch": s / 4, "accuracy": 0.5 + s / 100, "f1": 0.6} for s in (0, 2, 4)]
    log = {"run_id": run_id(cfg), "status": "ok", "reason": None, "config": cfg, "config_hash": config_hash(cfg),
           "task": {"name": "mrpc", "main_metric": "accuracy", "num_labels": 2, "majority_baseline": {"accuracy": 0.5}},
           "data": {"kind": "local"}, "steps": 4, "steps_per_epoch": 1,
           "history": {"train_loss": [0.7, 0.6, 0.5, 0.4], "evals": evals}, "final": evals[-1], "best": evals[-1],
           "params": {"trainable": 10, "total": 100}, "factors_file": None, "wall_time_s": 1.0, "env": {},
           "peak_memory_bytes": 1, "finished_at": "2026-01-01T00:00:00"}
    return {**log, **change}


def grid_dir(root: Path, *logs: dict) -> Path:
    d = root / "g"
    d.mkdir(parents=True, exist_ok=True)
    for lg in logs:
        write_json_atomic(d / f"{lg['run_id']}.json", lg)
    return d


# ============================================================================ bad paths (hypothesis)
NAMES = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12)
OUT_KINDS = ("file", "under_file", "proc", "long_name", "device")       # where a command cannot write
IN_FILE_KINDS = ("missing", "dir", "binary", "long_name", "device")     # a file it cannot read as text
IN_DIR_KINDS = ("missing", "file", "under_file", "long_name", "device")  # a directory it cannot read


def bad_path(base: Path, kind: str, name: str) -> Path:
    safe = name.strip(".") or "x"
    if kind == "file":
        (base / f"f-{safe}").write_text("x")
        return base / f"f-{safe}"
    if kind == "under_file":
        (base / "plain").write_text("x")
        return base / "plain" / safe
    if kind == "proc":
        return Path("/proc") / f"harness-{safe}"
    if kind == "long_name":
        return base / (safe * 300)[:300]
    if kind == "device":
        return Path("/dev/null")
    if kind == "missing":
        return base / f"missing-{safe}"
    if kind == "dir":
        (base / f"d-{safe}").mkdir(exist_ok=True)
        return base / f"d-{safe}"
    if kind == "binary":
        (base / f"b-{safe}").write_bytes(b"\xff\xfe\x00binary" * 10)
        return base / f"b-{safe}"
    raise ValueError(kind)


# (command line with PATH where the bad path goes, the kinds that are bad there)
PATH_CASES = [
    (["grid", "{spec}", "--out-dir", "PATH"], OUT_KINDS),
    (["grid", "PATH"], IN_FILE_KINDS),
    (["grid", "{spec}", "--data-dir", "PATH", "--out-dir", "{o}"], IN_DIR_KINDS),
    (["status", "PATH"], IN_FILE_KINDS),
    (["run", "--preset", "smoke", "--data-dir", "{glue}", "--out-dir", "PATH"], OUT_KINDS),
    (["run", "--preset", "smoke", "--data-dir", "PATH", "--out-dir", "{o}"], IN_DIR_KINDS),
    (["figures", "--logs", "PATH", "--out", "{o}"], IN_DIR_KINDS),
    (["figures", "--logs", "{logs}", "--out", "PATH"], OUT_KINDS),
    (["readme", "{spec}", "--readme", "PATH"], IN_FILE_KINDS),
    (["planted", "--data-dir", "{glue}", "--out", "PATH"], OUT_KINDS),
    (["planted", "--data-dir", "PATH", "--out", "{o}"], IN_DIR_KINDS),
    (["check", "PATH"], IN_DIR_KINDS),
]


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(PATH_CASES), pick=st.integers(0, 4), name=NAMES)
def test_bad_paths_are_one_line_and_create_nothing(case, pick, name, capsys, glue, tmp_path_factory):
    base = tmp_path_factory.mktemp("paths")
    (base / "logs").mkdir()
    spec = smoke_spec(base / "spec.yaml")
    args, kinds = case
    path = bad_path(base, kinds[pick % len(kinds)], name)
    before = tree(base)
    argv = [str(path) if a == "PATH" else a.format(spec=spec, o=base / "o", glue=glue, logs=base / "logs")
            for a in args]
    rc, out, err = cli(capsys, *argv)
    refused(rc, out, err)
    assert tree(base) == before
    assert not Path("/proc", f"harness-{name.strip('.') or 'x'}").exists()


# ============================================================================ bad spec files (hypothesis)
SCALARS = (st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats() | st.text(max_size=8)
           | st.sampled_from(["mrpc", "random", "smoke", "process", "notebook", 0, 1e-3]))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=8)
KEYS = st.sampled_from(["tasks", "methods", "seeds", "preset", "vary", "overrides", "blocks", "workers", "executor",
                        "out_dir", "name", "extend_lr_edges", "nope"])
SPEC_TEXTS = st.one_of(
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.dictionaries(KEYS, VALUES, max_size=4).map(lambda d: yaml.safe_dump({"preset": "smoke", **d})),
    st.sampled_from(["tasks: [mrpc]\ntasks: [rte]\n", "a: &a [1, 2]\nb: *a\n", "[" * 60 + "]" * 60,
                     "seeds: [" + ", ".join(map(str, range(6000))) + "]\n", "x: 2024-13-45\n", "{\n",
                     "tasks: [mrpc]\n" * 3, "\t- x", "!!python/object:os.system {}", "seeds: !!binary zz\n"]),
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(text=SPEC_TEXTS)
def test_bad_spec_files_are_one_line_and_create_nothing(text, capsys, tmp_path_factory):
    base = tmp_path_factory.mktemp("spec")
    spec = base / "g.yaml"
    spec.write_bytes(text.encode("utf-8", "surrogatepass"))
    rc, out, err = cli(capsys, "status", spec, "--out-dir", base / "o")
    assume(rc == 2)                   # a spec that happens to be valid is not a bad input (status ran on it)
    refused(rc, out, err)
    before = tree(base)
    rc, out, err = cli(capsys, "grid", spec, "--out-dir", base / "o", "--executor", "process")
    refused(rc, out, err)
    assert tree(base) == before


# ============================================================================ bad --set values (hypothesis)
BIG = st.one_of(st.integers(1000, 200_000).map(lambda n: "x" * n),
                st.integers(200, 3000).map(lambda n: "[" * n + "]" * n),
                st.text(max_size=30).map(lambda t: f"line\n{t}"), VALUES.map(json.dumps))


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(key=st.sampled_from([*DEFAULTS, "nope", "", "a\nb"]), value=BIG)
def test_bad_set_values_are_one_line(key, value, capsys, glue, tmp_path_factory):
    from harness.__main__ import _value
    from harness.tasks import UserError
    if key not in ("task", "method", "preset", "seed", "a\nb", "") and key in DEFAULTS:
        try:
            make_config("mrpc", "random", "smoke", **{key: _value(value)})
            assume(False)             # a valid value: running it would train
        except UserError:
            pass
    base = tmp_path_factory.mktemp("set")
    rc, out, err = cli(capsys, "run", "--preset", "smoke", "--data-dir", glue, "--out-dir", base / "o",
                       "--set", f"{key}={value}")
    refused(rc, out, err)
    assert not (base / "o").exists()


# ============================================================================ corrupt log files (hypothesis)
VICTIM = "mrpc-random-r4-lr2e-2-s9-0123abcd"      # named like a run log: it must be one


def victim_bytes(data) -> bytes:
    """A file that is not a well-formed run log: bytes, a truncated log, or a log with a field removed or of
    the wrong type."""
    good = run_log(seed=9, run_id=VICTIM)
    text = json.dumps(good, indent=1)
    kind = data.draw(st.sampled_from(["bytes", "truncated", "dropped", "retyped", "history"]))
    if kind == "bytes":
        raw = data.draw(st.binary(max_size=200))
        assume(raw.strip() != b"")
        return raw if raw.strip() else b"{"
    if kind == "truncated":
        cut = data.draw(st.integers(0, len(text.rstrip()) - 1))
        return text[:cut].encode()
    if kind == "dropped":
        del good[data.draw(st.sampled_from(REQUIRED))]
        return json.dumps(good).encode()
    if kind == "retyped":
        key = data.draw(st.sampled_from(["run_id", "status", "config", "history", "env", "data"]))
        strings = st.text(max_size=5) if key == "status" else st.nothing()     # of the right type, bad
        good[key] = data.draw(st.integers() | st.lists(st.integers(), max_size=2) | st.none() | strings)
        assume(good[key] not in ("ok", "failed", "interrupted"))
        return json.dumps(good).encode()
    good["history"] = data.draw(st.fixed_dictionaries(
        {"evals": st.lists(st.integers() | st.text(max_size=3) | st.fixed_dictionaries({"epoch": st.floats()}),
                           min_size=1, max_size=3)}))
    return json.dumps(good, allow_nan=True).encode()


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_corrupt_logs_are_never_skipped(data, capsys, tmp_path_factory):
    base = tmp_path_factory.mktemp("corrupt")
    d = grid_dir(base / "logs", run_log(0), run_log(1))
    victim = d / f"{VICTIM}.json"
    victim.write_bytes(victim_bytes(data))
    before = tree(base)
    rc, out, err = cli(capsys, "figures", "--logs", base / "logs", "--out", base / "figs")
    refused(rc, out, err, str(victim), "no figures were written")
    assert tree(base) == before
    rc, out, err = cli(capsys, "check", base / "logs")
    assert rc == 1 and f"{victim}: " in out and out.count("\n") == 2, out


# ============================================================================ figures, status, grid, check
def test_figures_refuse_a_truncated_log_a_truncated_factor_file_and_garbage(capsys, tmp_path):
    logs = tmp_path / "logs"
    good = run_log(0, factors_file=f"{run_log(0)['run_id']}.safetensors")
    d = grid_dir(logs, good, run_log(1))
    (d / good["factors_file"]).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")     # truncated safetensors
    rc, out, err = cli(capsys, "figures", "--logs", logs, "--out", tmp_path / "figs")
    refused(rc, out, err, good["factors_file"], "not readable safetensors")
    (d / good["factors_file"]).unlink()
    rc, out, err = cli(capsys, "figures", "--logs", logs, "--out", tmp_path / "figs")
    refused(rc, out, err, "factor file", "is missing")
    for p in d.glob("*.json"):                              # every log garbage: one line per file
        p.write_text("garbage")
    rc, out, err = cli(capsys, "figures", "--logs", logs, "--out", tmp_path / "figs")
    assert rc == 2 and err.count("error: ") == 2 and "not valid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "figs").exists()


def test_a_crash_mid_build_leaves_the_old_figures(monkeypatch, tmp_path):
    from harness.plots import build
    d = grid_dir(tmp_path / "logs", run_log(0))
    figs = tmp_path / "figs"
    (figs / "g").mkdir(parents=True)
    (figs / "g" / "old.png").write_bytes(b"old")
    (figs / "manifest.json").write_text("{}")
    before = {p: p.read_bytes() for p in figs.rglob("*") if p.is_file()}

    def crash(log_dir, fig_dir, show=None):
        (Path(fig_dir) / "half.png").write_bytes(b"half")
        raise RuntimeError("disk full")
    monkeypatch.setattr(build, "compare_figures", crash)
    with pytest.raises(RuntimeError):
        build.build_all(d.parent, figs)
    assert {p: p.read_bytes() for p in figs.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs", "logs"]          # no build directory left


def test_status_marks_and_grid_refuses_a_corrupt_log(capsys, glue, tmp_path):
    spec = smoke_spec(tmp_path / "s.yaml", methods=["random", "svd"])
    out = tmp_path / "o"
    out.mkdir()
    rid = run_id(make_config("mrpc", "svd", "smoke"))
    (out / f"{rid}.json").write_text('{"run_id": "' + rid)
    rc, stdout, err = cli(capsys, "status", spec, "--out-dir", out)
    assert rc == 1 and re.search(rf"^corrupt {rid}  truncated JSON", stdout, re.M), stdout
    assert "1 todo, 1 corrupt" in stdout
    rc, stdout, err = cli(capsys, "grid", spec, "--out-dir", out, "--data-dir", glue)
    refused(rc, stdout, err, f"{rid}.json", "truncated JSON", "move it away")
    assert sorted(p.name for p in out.iterdir()) == [f"{rid}.json"]                 # nothing ran


def test_check_passes_the_committed_logs_and_names_each_problem_of_a_corrupted_copy(tmp_path):
    import shutil

    from harness.check import check_dir, check_logs
    tracked = subprocess.run(["git", "ls-files", "logs"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    dirs = sorted({(ROOT / p).parent for p in tracked}) or [ROOT / "logs"]     # not the untracked scratch logs
    results = [check_dir(d) for d in dirs]
    assert [p for found, _ in results for p in found] == [] and sum(n for _, n in results) > 500
    grid = tmp_path / "quick"
    grid.mkdir()
    for log in sorted((ROOT / "logs" / "quick").glob("*.json"))[:5]:
        for p in (ROOT / "logs" / "quick").glob(f"{log.stem}.*"):
            shutil.copy(p, grid)
    logs = sorted(grid.glob("*.json"))
    logs[0].write_text(logs[0].read_text()[:100])                                   # truncated
    lg = json.loads(logs[1].read_text())
    lg["config"]["lr"] = 0.5                                                        # edited after the fact
    logs[1].write_text(json.dumps(lg))
    factors = grid / json.loads(logs[2].read_text())["factors_file"]
    factors.write_bytes(factors.read_bytes()[:1000])                               # truncated factors
    (grid / f"{logs[3].stem}.safetensors").unlink()                                 # missing factors
    (grid / ".x.json.tmp").write_text("{")                                          # debris of a killed write
    (grid / "notes.json").write_text("{}")                                          # a foreign file
    problems, _ = check_logs(tmp_path)
    want = {logs[0]: "truncated JSON", logs[1]: "is not the hash of its config", logs[2]: "not readable safetensors",
            logs[3]: "is missing", grid / ".x.json.tmp": "temporary file", grid / "notes.json": "not a run log"}
    assert len(problems) == len(want), problems
    for path, needle in want.items():
        assert any(p.startswith(f"{path}: ") and needle in p for p in problems), (path, problems)


def test_readme_without_logs_is_refused_and_unchanged(capsys, tmp_path):
    from harness.prose.readme import README_BEGIN, README_END
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{README_BEGIN}\nold\n{README_END}\n")
    spec = smoke_spec(tmp_path / "s.yaml", out_dir=str(tmp_path / "none"))
    rc, out, err = cli(capsys, "readme", spec, "--readme", readme)
    refused(rc, out, err, "no run of", "grid")
    assert "old" in readme.read_text() and not (tmp_path / "none").exists()


# ============================================================================ small items
@pytest.mark.parametrize("args,needle", [
    (["--workers", "0"], "invalid workers 0"), (["--threads", "0"], "invalid threads 0"),
    (["--threads", "-2"], "invalid threads -2"), (["--executor", "notebook", "--kernel", "pyhton3"], "unknown kernel"),
    (["--executor", "thread"], "unknown executor"),
])
def test_grid_options_are_checked_before_anything_exists(args, needle, capsys, glue, tmp_path):
    spec = smoke_spec(tmp_path / "s.yaml")
    rc, out, err = cli(capsys, "grid", spec, "--out-dir", tmp_path / "a" / "o", "--data-dir", glue, *args)
    refused(rc, out, err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


@pytest.mark.parametrize("args,needle", [(["--seeds", "-1"], "invalid seed -1"),
                                         (["--n-heldout", "100000"], "n_heldout 100000"),
                                         (["--lrs", "inf"], "invalid lr inf")])
def test_planted_bad_values(args, needle, capsys, glue, tmp_path):
    rc, out, err = cli(capsys, "planted", "--data-dir", glue, "--out", tmp_path / "p", "--model", "tiny-roberta",
                       *args)
    refused(rc, out, err, needle)
    assert not (tmp_path / "p").exists()


def test_interrupted_is_not_an_exception():
    from harness.grid import Interrupted
    assert issubclass(Interrupted, BaseException) and not issubclass(Interrupted, Exception)


# ============================================================================ limits
def timed(capsys, *args) -> tuple[int, str, str, float, int]:
    """cli(), with its time in seconds and the peak of Python's allocations in bytes."""
    tracemalloc.start()
    t = time.perf_counter()
    rc, out, err = cli(capsys, *args)
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return rc, out, err, dt, peak


def test_oversized_specs_and_alias_bombs_are_refused_fast(capsys, tmp_path):
    big = tmp_path / "big.yaml"        # 3 × 2 × 100 × 200 = 120,000 configs
    big.write_text(yaml.safe_dump({"preset": "smoke", "tasks": ["mrpc", "rte", "cola"], "methods": ["random", "svd"],
                                   "seeds": list(range(100)), "vary": {"lr": [1e-4 * (i + 1) for i in range(200)]}}))
    huge = tmp_path / "huge.yaml"      # 1000 × 1000 = 10⁶
    huge.write_text(yaml.safe_dump({"preset": "smoke", "seeds": list(range(1000)),
                                    "vary": {"lr": [1e-5 * (i + 1) for i in range(1000)]}}))
    bomb = tmp_path / "bomb.yaml"      # the "billion laughs": 9⁹ strings from ~400 bytes
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    bomb.write_text("\n".join(lines) + "\n")
    for args, needle in [(["grid", big, "--out-dir", tmp_path / "o"], "120,000 configs"),
                         (["status", huge], "1,000,000 configs"),
                         (["grid", bomb], "aliases"),
                         (["status", bomb], "aliases")]:
        rc, out, err, dt, peak = timed(capsys, *args)
        refused(rc, out, err, needle, "--allow-large" if "configs" in needle else "")
        assert dt < 1.0 and peak < 50e6, (args, dt, peak)
    assert not (tmp_path / "o").exists()


def test_counting_configs_matches_expanding_them():
    from harness.grid import expand
    from harness.validate import count_configs, load_spec
    spec = {"preset": "smoke", "tasks": ["mrpc", "rte"], "methods": ["random", "svd"], "seeds": [0, 1],
            "vary": {"lr": [1e-3, 2e-3, 3e-3]}, "blocks": [{}, {"tasks": ["cola"], "vary": {"rank": [2, 4]}}]}
    assert count_configs(spec) == len(expand(spec)) == 2 * 2 * 2 * 3 + 2 * 2 * 2
    for name in ("quick", "smoke", "ranks", "inits_sweep"):
        assert count_configs(load_spec(ROOT / "configs" / f"{name}.yaml")) >= len(expand(load_spec(
            ROOT / "configs" / f"{name}.yaml")))


def test_a_huge_tsv_line_is_refused_naming_file_and_line(capsys, tmp_path):
    data = write_fixture(tmp_path / "data", tasks=("mrpc",))
    train = data / "MRPC" / "train.tsv"
    lines = train.read_text(encoding="utf-8").split("\n")
    lines.insert(4, "x" * 8_000_000)
    train.write_text("\n".join(lines), encoding="utf-8")
    rc, out, err, dt, peak = timed(capsys, "run", "--preset", "smoke", "--data-dir", data, "--out-dir", tmp_path / "o")
    refused(rc, out, err, f"{train} line 5", "longer than 65,536 bytes")
    assert dt < 1.0 and peak < 10e6 and not (tmp_path / "o").exists()


def test_messages_cut_huge_values_before_formatting_them():
    from harness.validate import show
    t = time.perf_counter()
    s = show([list(range(10**5))] * 10**3)
    assert len(s) <= 60 and time.perf_counter() - t < 0.01


# ============================================================================ signals, per executor
EXECUTORS = {"notebook": ["--executor", "notebook"], "process": ["--executor", "process"],
             "workers": ["--executor", "process", "--workers", "2", "--threads", "1"]}
# When the signal may come, in seconds after the grid's first line: within the three runs (a kernel start is
# ~3 s per notebook run; the workers take ~3 s to start).
MOMENTS = {"notebook": (1.0, 8.0), "process": (0.5, 3.0), "workers": (3.0, 6.0)}


@pytest.fixture(scope="module")
def clean(glue, tmp_path_factory):
    """A clean in-process run of the signal tests' grid: {run_id: final metrics}, and the spec."""
    from harness.grid import run_grid
    from harness.validate import load_spec
    base = tmp_path_factory.mktemp("clean")
    spec = smoke_spec(base / "s.yaml", methods=["random", "svd", "lora_fa"])
    run_grid(load_spec(spec), str(glue), "cpu", out_dir=str(base / "o"), executor="process", progress=False)
    finals = {p.stem: json.loads(p.read_text())["final"] for p in (base / "o").glob("*.json")}
    assert len(finals) == 3 and all(f is not None for f in finals.values())
    return spec, finals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("executor", list(EXECUTORS))
def test_a_signal_stops_the_grid_and_a_plain_rerun_finishes_it(executor, signum, clean, glue, subprocess_env,
                                                                 tmp_path, capsys):
    spec, finals = clean
    out = tmp_path / "o"
    cmd = ["grid", str(spec), "--data-dir", str(glue), "--out-dir", str(out), "--device", "cpu", *EXECUTORS[executor]]
    proc = subprocess.Popen([sys.executable, "-m", "harness", *cmd], cwd=ROOT, env=subprocess_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline().startswith("grid ")         # expanded, about to run the first config
        moment = random.Random(f"{executor}{signum}").uniform(*MOMENTS[executor])
        time.sleep(moment)
        sent = time.time()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [ln for ln in re.split(r"[\r\n]", stderr) if ln.strip() and not NOISE.match(ln)]
    if proc.returncode == 0:          # the grid finished before the signal: nothing to check but the rerun
        report = f"{executor} {signum.name} at {moment:.1f} s: the grid had finished"
    else:
        assert proc.returncode == 128 + signum, (proc.returncode, stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith(f"interrupted ({signum.name}): "), stderr[-2000:]
        assert "run the same grid command again" in lines[0] and took < 10, took
        statuses = {p.stem: json.loads(p.read_text())["status"] for p in out.glob("*.json")}
        assert set(statuses.values()) <= {"ok", "interrupted"}, statuses
        report = f"{executor} {signum.name} at {moment:.1f} s: stopped in {took:.1f} s, logs {sorted(statuses.values())}"
    assert "Traceback" not in stderr

    rc, stdout, err = cli(capsys, *cmd)
    assert rc == 0 and stdout.strip().endswith("3 done, 0 failed"), stdout + err
    files = sorted(p.name for p in out.iterdir())
    kinds = (".json", ".safetensors", ".ipynb") if executor == "notebook" else (".json", ".safetensors")
    assert files == sorted(f"{rid}{k}" for rid in finals for k in kinds)
    for rid, final in finals.items():
        log = json.loads((out / f"{rid}.json").read_text())
        assert log["status"] == "ok" and log["final"] == final, rid
    with capsys.disabled():
        print(f"\n{report}; the rerun equals a clean run")


WORKER_STOPPED_TWICE = """
import os, signal, sys, time
import harness.grid as g, harness.train as train
from harness.config import make_config

def run(*args, **kw):                       # the grid's stop reaches the worker mid-run
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)

def write_signalled(*args):                 # and a second one while the run logs itself
    os.kill(os.getpid(), signal.SIGTERM)
    write(*args)

train.run, write, g.write_json_atomic = run, g.write_json_atomic, write_signalled
g._worker_init(1)
print(g._execute(make_config("mrpc", "random", "smoke"), sys.argv[1], None, "cpu", "process", "", {}, 1))
"""


def test_a_worker_stopped_in_a_run_logs_it_then_exits_even_if_signalled_twice(subprocess_env, tmp_path):
    """A worker that returned to its queue after logging an interrupted run could wait there forever: a second
    SIGTERM (the pool's own, once another worker had exited) came while it logged and was only noted, and the
    broken pool never sent it the end.  The grid process hung in the pool's shutdown.  It now exits at once."""
    proc = subprocess.run([sys.executable, "-c", WORKER_STOPPED_TWICE, str(tmp_path)], cwd=ROOT, env=subprocess_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    (log,) = tmp_path.glob("*.json")
    assert json.loads(log.read_text())["status"] == "interrupted"


def test_interrupted_survives_pickling_as_a_workers_exception():
    import pickle

    from harness.grid import Interrupted
    e = pickle.loads(pickle.dumps(Interrupted(signal.SIGTERM, "left")))
    assert isinstance(e, Interrupted) and (e.signum, e.message, str(e)) == (signal.SIGTERM, "left", "SIGTERM")


def test_a_broken_pool_is_a_stop_only_if_its_workers_ended_on_a_stop_signal():
    import multiprocessing as mp

    from harness.grid import _stopped_by_a_signal
    ctx = mp.get_context("spawn")

    def ended(code):
        p = ctx.Process(target=os._exit, args=(code,)) if code >= 0 else ctx.Process(target=time.sleep, args=(60,))
        p.start()
        if code < 0:
            p.kill()
        p.join(30)
        return p

    stopped, killed, clean = ended(128 + signal.SIGTERM), ended(-9), ended(0)
    assert (stopped.exitcode, killed.exitcode, clean.exitcode) == (143, -9, 0)
    assert _stopped_by_a_signal([stopped]) and _stopped_by_a_signal([stopped, ended(128 + signal.SIGINT)])
    assert not _stopped_by_a_signal([stopped, killed])          # the OOM killer's victim is not a stop
    assert not _stopped_by_a_signal([clean])                    # a pool broken without any signal is not either


def test_a_signal_noted_while_the_pool_shuts_down_still_stops_the_grid(monkeypatch, glue, tmp_path):
    """Noted (not raised) once the pool's wait loop is over, it must not let the grid end as if nothing came."""
    import harness.grid as g
    from harness.validate import load_spec

    def last_run_then_signal(todo, out, *args):
        g._SIGNALS.append(signal.SIGTERM)      # as _note_signal does during pool.shutdown
    monkeypatch.setattr(g, "_run_todo", last_run_then_signal)
    spec = load_spec(smoke_spec(tmp_path / "s.yaml"))
    with pytest.raises(g.Interrupted) as e:
        g.run_grid(spec, str(glue), "cpu", out_dir=str(tmp_path / "o"), executor="process", progress=False)
    assert e.value.signum == signal.SIGTERM and "1 runs left" in e.value.message and not g._SIGNALS


def test_stopping_the_workers_kills_one_that_ignores_sigterm_after_the_grace(monkeypatch):
    import multiprocessing as mp

    import harness.grid as g
    ctx = mp.get_context("spawn")
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)     # inherited: the child ignores SIGTERM too
    try:
        deaf = ctx.Process(target=time.sleep, args=(60,))
        deaf.start()
    finally:
        signal.signal(signal.SIGTERM, previous)
    polite = ctx.Process(target=time.sleep, args=(60,))
    polite.start()
    monkeypatch.setattr(g, "STOP_GRACE_S", 1.0)
    t0 = time.time()
    g._stop_workers([deaf, polite])
    assert (deaf.exitcode, polite.exitcode) == (-signal.SIGKILL, -signal.SIGTERM) and time.time() - t0 < 4


def test_a_stop_signal_while_the_pool_runs_is_raised_at_the_next_poll_never_inside_the_pool(monkeypatch, tmp_path):
    """Raised from the signal handler, the stop could land inside concurrent.futures' own code (holding a
    future's lock), and the pool's shutdown then waited forever: the grid process hung after SIGTERM.  While the
    pool runs, the handler only notes the signal; the wait loop raises it within one poll and shuts the pool down."""
    from concurrent.futures import Future

    import harness.grid as g
    seen = []

    class Pool:                     # stands in for the process pool: its submit is where the signal arrives
        _processes = {}

        def submit(self, *args):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100_000):      # the handler runs between these bytecodes
                    pass
            except g.Interrupted:
                seen.append("raised inside the pool")
                raise
            seen.append("submitted")
            return Future()           # never completes: only the poll can end the wait

        def shutdown(self, wait, cancel_futures):
            seen.append("shut down")

    monkeypatch.setattr(g, "_worker_pool", lambda *a: Pool())
    previous = signal.signal(signal.SIGTERM, g._stop_signal)     # as run_grid installs it
    g._SIGNALS.clear()
    try:
        t0 = time.time()
        with pytest.raises(g.Interrupted) as e:
            g._run_todo([{"epochs": 1}], tmp_path, None, "cpu", "process", "", {}, 2, 1, False, {})
        assert signal.getsignal(signal.SIGTERM) is g._stop_signal    # the grid's own handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
        g._SIGNALS.clear()
    assert seen == ["submitted", "shut down"] and e.value.signum == signal.SIGTERM
    assert time.time() - t0 < 5
