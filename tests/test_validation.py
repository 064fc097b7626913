"""Every bad input is one ``error:`` line (exit 2), never a traceback, and leaves nothing behind.

The reproductions of the "every bad input gets a one-line error" issue, one test each: bad config
values (harness/validate.py), --set of an option's field, binary data files, malformed grid specs,
a lr that overflows, zero epochs / examples, the PEFT export of a sequence classifier, and the grid
lock race (harness/lock.py).  Most cases run in-process through ``harness.__main__.main``; a few
run ``python -m harness`` to check what a user sees.  Property-based tests (hypothesis) feed random
field values, command lines and file bytes and accept only a result or a UserError.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.config import DEFAULTS, METHODS, PRESETS, config_hash, make_config, run_id
from harness.data import read_glue_tsv
from harness.fixtures import write_fixture
from harness.lock import GridLock
from harness.tasks import TASKS, UserError
from harness.validate import CONFIG_RULES, OWN_OPTIONS, validate_config, validate_spec

BAD_INPUTS = [0]          # bad inputs tried (each one must end as a UserError / exit 2); printed at the end


@pytest.fixture(scope="module", autouse=True)
def _report_count():
    yield
    print(f"\ntest_validation: {BAD_INPUTS[0]} bad inputs tried")


def counted(n: int = 1) -> None:
    BAD_INPUTS[0] += n


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("glue"), tasks=("mrpc",))


def cli(capsys, *args) -> tuple[int, str, str]:
    from harness.__main__ import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"stderr is not one line: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    counted()
    return lines[0]


# ============================================================================ 1, 2, 5, 6: bad config values
# (--set or --seed, the bad value as it must appear in the message)
BAD_RUN_ARGS = [
    (["--set", "rank=0"], "rank 0"), (["--set", "rank=-1"], "rank -1"), (["--set", "rank=100000"], "rank 100000"),
    (["--set", "rank=abc"], "rank 'abc'"), (["--set", "rank=2.5"], "rank 2.5"), (["--set", "rank=true"], "rank True"),
    (["--set", "batch_size=0"], "batch_size 0"), (["--set", "lr=-1"], "lr -1"), (["--set", "lr=0"], "lr 0"),
    (["--set", "lr=1e300"], "lr 1e+300"), (["--set", "lr=NaN"], "lr nan"), (["--set", "lr=inf"], "lr 'inf'"),
    (["--set", "lr=abc"], "lr 'abc'"), (["--seed", "-1"], "seed -1"), (["--seed", "4294967296"], "seed 4294967296"),
    (["--set", 'targets=["nope", ""]'], "targets ['nope', '']"), (["--set", "targets=[]"], "targets []"),
    (["--set", "targets=query"], "targets 'query'"), (["--set", "svd_method=bogus"], "svd_method 'bogus'"),
    (["--set", "max_train_examples=0"], "max_train_examples 0"), (["--set", "epochs=0"], "epochs 0"),
    (["--set", "evals_per_epoch=0"], "evals_per_epoch 0"), (["--set", "alpha=0"], "alpha 0"),
    (["--set", "dropout=1"], "dropout 1"), (["--set", "warmup_ratio=1"], "warmup_ratio 1"),
    (["--set", "weight_decay=-0.1"], "weight_decay -0.1"), (["--set", "max_length=4"], "max_length 4"),
    (["--set", "niter=-1"], "niter -1"), (["--set", "group_by_length=1"], "group_by_length 1"),
    (["--set", "head=classifier"], "head 'classifier'"), (["--set", 'model=""'], "model ''"),
    (["--set", "nope=1"], "nope"), (["--set", "rank"], "'rank'"),
    (["--set", "seed=3"], "--seed 3"), (["--set", "task=rte"], "--task rte"), (["--set", "method=svd"], "--method svd"),
    (["--set", "preset=quick"], "--preset quick"), (["--seed", "abc"], "'abc'"), (["--device", "bogus"], "'bogus'"),
    (["--method", "pissa"], "'pissa'"), (["--task", "mrcp"], "'mrcp'"),
]


@pytest.mark.parametrize("args,needle", BAD_RUN_ARGS, ids=[" ".join(a) for a, _ in BAD_RUN_ARGS])
def test_bad_run_argument_is_one_line(args, needle, capsys, glue, tmp_path):
    out = tmp_path / "o"
    rc, stdout, err = cli(capsys, "run", "--preset", "smoke", "--data-dir", glue, "--out-dir", out, *args)
    line = assert_one_line(rc, err, needle)
    assert stdout == ""
    assert not out.exists()                              # the run never started: no out dir
    if "--set" in args and "=" in args[-1] and args[-1].split("=")[0] in OWN_OPTIONS:
        assert "own option" in line and "multiple values" not in line


@pytest.mark.parametrize("value,needle", [("64", "rank 64 is too large"), ('["nope"]', "targets ['nope'] matched no")])
def test_lora_rejects_at_start_up_as_one_line(value, needle, capsys, glue, tmp_path):
    """Values only the model can refute (a rank above a layer's size, targets it lacks): lora's
    ValueError at start-up becomes one line, exit 2, and the out dir it made is removed again."""
    field = "rank" if value == "64" else "targets"
    out = tmp_path / "a" / "b"
    rc, stdout, err = cli(capsys, "run", "--preset", "smoke", "--data-dir", glue, "--out-dir", out,
                          "--set", f"{field}={value}")
    line = assert_one_line(rc, err, needle)
    assert "valid: 1..32" in line or "Linear layers include" in line
    assert not (tmp_path / "a").exists()


def test_out_dir_that_is_a_file(capsys, glue, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = cli(capsys, "run", "--preset", "smoke", "--data-dir", glue, "--out-dir", f)
    assert_one_line(rc, err, str(f), "is a file")


def test_existing_out_dir_is_kept_when_the_run_cannot_start(capsys, glue, tmp_path):
    out = tmp_path / "o"
    (out / "other").mkdir(parents=True)
    rc, _, err = cli(capsys, "run", "--preset", "smoke", "--data-dir", glue, "--out-dir", out, "--set", "rank=64")
    assert_one_line(rc, err, "rank 64")
    assert sorted(p.name for p in out.iterdir()) == ["other"]


def test_zero_epochs_and_examples_are_refused_not_run():
    """Reproduction 6: max_train_examples=0 used to train on everything, epochs=0 logged 'ok' with the
    step-0 metrics as final.  Both are refused at config time."""
    for field in ("max_train_examples", "epochs"):
        with pytest.raises(UserError, match=rf"^invalid {field} 0; valid: an integer ≥ 1"):
            make_config("mrpc", "random", "smoke", **{field: 0})
        counted()
    assert make_config("mrpc", "random", "smoke", max_train_examples=None)["max_train_examples"] is None


def test_seed_override_in_python_is_a_user_error():
    with pytest.raises(UserError, match="invalid seed -1"):
        make_config("mrpc", "random", "smoke", seed=-1)
    with pytest.raises(UserError, match="invalid task 5"):
        make_config(5, "random", "smoke")
    with pytest.raises(UserError, match=r"invalid preset \['smoke'\]"):
        make_config("mrpc", "random", ["smoke"])
    counted(3)


# ---------------------------------------------------------------------------- the rule table itself
def test_every_config_field_has_a_rule():
    """A new config field must get a line in harness.validate.CONFIG_RULES."""
    assert set(DEFAULTS) - {"task", "method", "preset"} <= set(CONFIG_RULES), set(DEFAULTS) - set(CONFIG_RULES)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("method", METHODS)
def test_every_preset_and_method_is_valid(preset, method):
    for task in ("mrpc", "rte", "cola"):
        cfg = make_config(task, method, preset)
        assert validate_config(cfg) == cfg


def test_floats_accept_yaml_number_strings():
    """PyYAML reads 1e-3 (no dot) as the string '1e-3': a float field takes it as 0.001 (and the hash
    is that of the float)."""
    cfg = make_config("mrpc", "random", "smoke", lr="1e-3", alpha=4)
    assert cfg["lr"] == 0.001 and isinstance(cfg["alpha"], float)
    assert config_hash(cfg) == config_hash(make_config("mrpc", "random", "smoke", lr=0.001, alpha=4.0))


NEW_FIELDS = [  # fields being added to DEFAULTS: checked when a config has them (field, value, message start)
    ("precision", "fp16", "unknown precision 'fp16'; valid: fp32, bf16"),
    ("precision", None, "invalid precision None; valid: fp32, bf16"),
    ("val_fraction", 0, "invalid val_fraction 0; valid: a number in (0, 0.5], or null"),
    ("val_fraction", 0.6, "invalid val_fraction 0.6; valid: a number in (0, 0.5]"),
    ("val_fraction", "x", "invalid val_fraction 'x'"),
    ("init_pull", -0.1, "invalid init_pull -0.1"), ("dropout_mask", "int8", "unknown dropout_mask 'int8'"),
    ("init_batches", 0, "invalid init_batches 0; valid: an integer ≥ 1"),
    ("rslora", "yes", "invalid rslora 'yes'; valid: true or false"), ("rslora", 1, "invalid rslora 1"),
]


@pytest.mark.parametrize("field,value,message", NEW_FIELDS)
def test_new_fields_are_checked_when_present(field, value, message):
    base = make_config("mrpc", "random", "smoke")
    with pytest.raises(UserError) as e:
        validate_config({**base, field: value})
    assert str(e.value).startswith(message), str(e.value)
    counted()


def test_new_fields_accept_their_valid_values():
    base = make_config("mrpc", "random", "smoke")
    good = dict(precision="bf16", val_fraction=0.5, init_pull=0.05, init_batches=1, rslora=True)
    assert validate_config({**base, **good}) == {**base, **good}
    assert validate_config({**base, "val_fraction": None})["val_fraction"] is None
    full = make_config("mrpc", "full", "smoke")
    assert full["rank"] is None and validate_config({**full, "rslora": None, "init_batches": None})["rank"] is None


# ============================================================================ 3: binary data files
def test_binary_train_file_is_one_line(capsys, glue, tmp_path):
    data = tmp_path / "data"
    write_fixture(data, tasks=("mrpc",))
    train = data / "MRPC" / "train.tsv"
    train.write_bytes(train.read_bytes()[:200] + b"\n\xff\xfe\x00\x9c garbage")
    rc, _, err = cli(capsys, "run", "--preset", "smoke", "--data-dir", data, "--out-dir", tmp_path / "o")
    assert_one_line(rc, err, str(train), "not UTF-8", "0xff")
    assert not (tmp_path / "o").exists()


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=400) | st.builds(
           lambda head, text, tail: (head + text).encode() + tail,
           st.sampled_from(["", "\ufeff#1 String\t#2 String\tQuality\n", "sentence1\tsentence2\tscore\n",
                            "sentence1\tsentence2\tlabel\n"]), st.text(max_size=80), st.binary(max_size=20)),
       task=st.sampled_from(["mrpc", "cola", "stsb", "rte"]))
def test_random_bytes_as_a_data_file_never_crash(raw, task, tmp_path_factory):
    path = tmp_path_factory.mktemp("bytes") / "train.tsv"
    path.write_bytes(raw)
    try:
        examples = read_glue_tsv(path, TASKS[task])
    except UserError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        counted()
        return
    assert examples and all(len(ex.texts) == len(TASKS[task].tsv_text) for ex in examples)


# ============================================================================ 4: grid specs
BAD_SPECS = [
    (None, "empty grid spec"), ([1, 2], "must be a mapping"), ("mrpc", "must be a mapping"),
    ({"seeds": 0}, "seeds must be a non-empty list"), ({"seeds": [-1]}, "invalid seed -1"),
    ({"seeds": [True]}, "invalid seed True"), ({"seeds": []}, "seeds must be a non-empty list"),
    ({"tasks": "mrpc"}, "got the string 'mrpc'"), ({"tasks": ["mrcp"]}, "unknown task 'mrcp'"),
    ({"methods": ["pissa"]}, "unknown method 'pissa'"), ({"methods": "svd"}, "got the string 'svd'"),
    ({"preset": "huge"}, "unknown preset 'huge'"), ({"preset": 3}, "invalid preset 3"),
    ({"epochs": 3}, "unknown grid key(s) epochs"), ({"overrides": [1]}, "overrides must be a mapping"),
    ({"overrides": {"seed": 3}}, "has its own spec key; use seeds:"), ({"overrides": {"task": "rte"}}, "use tasks:"),
    ({"overrides": {"rank": 0}}, "invalid rank 0"), ({"overrides": {"nope": 1}}, "unknown config field 'nope'"),
    ({"vary": [1]}, "vary must be a mapping"), ({"vary": {"lr": 0.001}}, "vary.lr must be a non-empty list"),
    ({"vary": {"lr": [0.001, 5]}}, "invalid lr 5"), ({"vary": {"seed": [1]}}, "use seeds:"),
    ({"blocks": {"seeds": [0]}}, "blocks must be a non-empty list"), ({"blocks": []}, "blocks must be a non-empty list"),
    ({"blocks": [3]}, "blocks[0] must be a mapping"), ({"blocks": [{}, {"seeds": 0}]}, "blocks[1]: seeds must"),
    ({"blocks": [{"out_dir": "x"}]}, "cannot be set inside a block"), ({"blocks": [{"blocks": [{}]}]}, "inside a block"),
    ({"name": ""}, "invalid name ''"), ({"out_dir": 3}, "invalid out_dir 3"),
    ({"workers": 0}, "invalid workers 0"), ({"workers": "2"}, "invalid workers '2'"),
    ({"save_factors": "yes"}, "invalid save_factors 'yes'"), ({"lr_from": 3}, "invalid lr_from 3"),
    ({"extend_lr_edges": -1}, "invalid extend_lr_edges -1"), ({"executor": "thread"}, "unknown executor 'thread'"),
]


@pytest.mark.parametrize("spec,needle", BAD_SPECS, ids=[str(s)[:40] for s, _ in BAD_SPECS])
def test_bad_spec_is_a_user_error(spec, needle):
    with pytest.raises(UserError) as e:
        validate_spec(spec, "x.yaml")
    msg = str(e.value)
    assert msg.startswith("x.yaml: ") and needle in msg and "\n" not in msg, msg
    counted()


def test_good_specs_pass(repo_root):
    for p in sorted((repo_root / "configs").glob("*.yaml")):
        import yaml
        spec = yaml.safe_load(p.read_text())
        assert validate_spec(spec, p) is spec
    new_keys = dict(workers=2, save_factors=True, lr_from="configs/sweep.yaml", extend_lr_edges=1, executor="process")
    validate_spec({"tasks": ["mrpc", "RTE"], "seeds": [0, 2**32 - 1], "overrides": {"lr": "1e-3", "rank": None},
                   "blocks": [{"vary": {"rank": [4, 8]}}], **new_keys})


@pytest.mark.parametrize("text,needle", [("", "empty grid spec"), ("- mrpc\n- rte\n", "got a list"),
                                         ("seeds: 0\n", "seeds must be a non-empty list"),
                                         ("tasks: mrpc\n", "got the string 'mrpc'")])
def test_bad_spec_file_through_status(text, needle, capsys, tmp_path):
    spec = tmp_path / "g.yaml"
    spec.write_text(text)
    for cmd in ("status", "grid"):
        rc, stdout, err = cli(capsys, cmd, spec, "--out-dir", tmp_path / "o")
        assert_one_line(rc, err, str(spec), needle)
        assert stdout == "" and not (tmp_path / "o").exists()


# ============================================================================ what a user sees (subprocesses)
@pytest.fixture
def run_harness(subprocess_env, repo_root):
    def go(*args):
        return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=repo_root, env=subprocess_env,
                              capture_output=True, text=True, timeout=120)
    return go


@pytest.mark.parametrize("extra,needle", [(["--set", "lr=1e300"], "invalid lr 1e+300"),
                                          (["--set", "seed=3"], "use --seed 3")])
def test_cli_bad_value_subprocess(extra, needle, run_harness, glue, tmp_path):
    r = run_harness("run", "--preset", "smoke", "--data-dir", glue, "--out-dir", tmp_path / "o", *extra)
    assert_one_line(r.returncode, r.stderr, needle)
    assert r.stdout == "" and "Traceback" not in r.stdout
    assert not (tmp_path / "o").exists()


def test_cli_binary_data_subprocess(run_harness, tmp_path):
    data = write_fixture(tmp_path / "data", tasks=("mrpc",))
    train = data / "MRPC" / "train.tsv"
    train.write_bytes(bytes(range(256)) * 4)
    r = run_harness("run", "--preset", "smoke", "--data-dir", data, "--out-dir", tmp_path / "o")
    assert_one_line(r.returncode, r.stderr, str(train), "not UTF-8")
    assert not (tmp_path / "o").exists()


# ============================================================================ property-based: config and CLI
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from([1, 4, 8, 0.5, 1e-3, "1e-3", "0.1", ["query"], ["classifier"],
                                                      "fp32", "full", "randomized", 0, -1]))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=2),
                      max_leaves=5)
FIELDS = st.sampled_from([*DEFAULTS, "nope", ""])


@settings(max_examples=300, deadline=None, database=None)
@given(field=FIELDS, value=VALUES, method=st.sampled_from(METHODS), preset=st.sampled_from(list(PRESETS)))
def test_random_field_values_through_make_config(field, value, method, preset):
    if field in ("task", "method", "preset"):
        args = dict(task="mrpc", method=method, preset=preset)
        args[field] = value
        call = lambda: make_config(args["task"], args["method"], args["preset"])   # noqa: E731
    else:
        call = lambda: make_config("mrpc", method, preset, **{field: value})      # noqa: E731
    try:
        cfg = call()
    except UserError as e:
        assert "\n" not in str(e)
        counted()
        return
    assert validate_config(cfg) == cfg
    json.dumps(cfg, allow_nan=False)          # a valid config hashes and names its run
    assert run_id(cfg).startswith(cfg["task"])


SET_TEXT = st.builds(json.dumps, VALUES.filter(lambda v: v == v)) | st.text(max_size=20)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(sets=st.lists(st.tuples(FIELDS | st.text(max_size=6), SET_TEXT), max_size=3),
       seed=st.integers(-5, 2**33).map(str) | st.text(max_size=6).filter(lambda s: not s.startswith("-")))
def test_random_command_lines_never_crash(sets, seed, capsys, monkeypatch, tmp_path):
    """``run --seed S --set K=V ...`` with random S, K, V: exit 0 (the config is valid: a stub run)
    or exit 2 with one error line; nothing else, and no out dir."""
    import harness.train
    seen = []
    monkeypatch.setattr(harness.train, "run", lambda cfg, *a, **k: seen.append(cfg) or
                        {"run_id": run_id(cfg), "status": "ok", "final": None, "wall_time_s": 0})
    monkeypatch.chdir(tmp_path)
    args = ["run", "--preset", "smoke", "--seed", seed, *[x for k, v in sets for x in ("--set", f"{k}={v}")]]
    rc, out, err = cli(capsys, *args)
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert_one_line(rc, err)
        assert not seen
    else:
        assert err == "" and len(seen) == 1 and validate_config(seen[0]) == seen[0]
    assert not (tmp_path / "logs").exists()


# ============================================================================ 7: PEFT export of a sequence classifier
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, num_labels=2)


def _classifier(kind: str, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification
    torch.manual_seed(seed)
    cls, config = ((BertForSequenceClassification, BertConfig) if kind == "bert"
                   else (RobertaForSequenceClassification, RobertaConfig))
    return cls(config(**TINY)).eval()


@pytest.mark.parametrize("kind,init,kw", [("bert", "random", {}), ("roberta", "random", {}), ("bert", "svd", {}),
                                          ("bert", "random", {"task_type": None}), ("roberta", "svd", {"rslora": True})])
def test_export_peft_default_args_reload_with_equal_logits(kind, init, kw, tmp_path):
    """Reproduction 7: with default arguments the export of a sequence classifier (adapters + a trained
    classifier, and BERT's trained pooler) reloads in PEFT with the same logits."""
    peft = pytest.importorskip("peft")
    import inspect
    import lora
    rslora = kw.pop("rslora", False)
    if rslora and "rslora" not in inspect.signature(lora.add_lora).parameters:
        pytest.skip("lora.add_lora has no rslora yet")
    base_dir = tmp_path / "base"
    _classifier(kind).save_pretrained(base_dir)
    cls = type(_classifier(kind))
    model = cls.from_pretrained(base_dir).eval()
    lora.add_lora(model, ["query", "value"], rank=4, alpha=8.0, init=init, seed=0,
                  keep_trainable=["classifier", "pooler"], **({"rslora": True} if rslora else {}))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                                   # stand-in for training: move every trainable weight
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    ids = torch.randint(3, TINY["vocab_size"], (4, 12), generator=g)
    with torch.no_grad():
        y = model(input_ids=ids).logits
        assert (y - cls.from_pretrained(base_dir).eval()(input_ids=ids).logits).abs().max() > 1e-3
    out = lora.export_peft(model, tmp_path / "peft", **kw)     # base path from model.name_or_path
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir)
    assert config["task_type"] == ("SEQ_CLS" if "task_type" not in kw else None)
    assert "classifier" in config["modules_to_save"]
    assert ("bert.pooler" in config["modules_to_save"]) == (kind == "bert")
    reloaded = peft.PeftModel.from_pretrained(cls.from_pretrained(base_dir), str(out)).eval()
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - y).abs().max().item() <= 1e-5


def test_export_peft_refuses_to_drop_a_trained_module(tmp_path):
    import lora
    model = _classifier("bert")
    lora.add_lora(model, ["query", "value"], rank=4, keep_trainable=["classifier", "pooler"])
    with pytest.raises(ValueError, match=r"bert\.pooler\.dense\.weight.*would be lost|would be lost.*bert\.pooler"):
        lora.export_peft(model, tmp_path / "p", "base", modules_to_save=["classifier"])
    with pytest.raises(ValueError, match="pass base_model_name_or_path"):
        lora.export_peft(model, tmp_path / "p")             # built from a config: no name_or_path
    with pytest.raises(ValueError, match="holds LoRA layers"):
        lora.export_peft(model, tmp_path / "p", "base", modules_to_save=["encoder", "classifier", "pooler"])
    assert not (tmp_path / "p").exists()
    counted(3)


def test_export_peft_infers_head_and_task_type():
    from lora.io import infer_task_type, trainable_modules
    import lora
    model = _classifier("bert")
    lora.add_lora(model, ["query", "value"], rank=4, keep_trainable=["classifier", "pooler"])
    assert infer_task_type(model) == "SEQ_CLS"
    assert sorted(trainable_modules(model)) == ["bert.pooler", "classifier"]
    assert infer_task_type(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None


# ============================================================================ 8: the grid lock
def test_lock_race_never_admits_two(tmp_path):
    """Reproduction 8: a stale lock file (dead pid) and grids starting at once.  200 trials of 4 threads
    that start together: exactly one gets the lock each time (the old pid-file lock let two in ~30 %)."""
    n, trials = 4, 200
    for t in range(trials):
        out = tmp_path / f"t{t}"
        out.mkdir()
        (out / ".grid.lock").write_text("999999999")          # stale: no such process
        start, done = threading.Barrier(n), threading.Barrier(n)
        got, errors = [], []

        def worker():
            lock = GridLock(out)
            start.wait()
            try:
                lock.__enter__()
                got.append(1)
            except UserError as e:
                errors.append(str(e))
            done.wait()                                       # everyone has tried while the holder holds
            if lock._fd is not None:
                lock.__exit__(None, None, None)

        threads = [threading.Thread(target=worker) for _ in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(got) == 1 and len(errors) == n - 1, (t, got, errors)
        assert all("kill" not in e and str(out) in e for e in errors)
        assert not (out / ".grid.lock").exists()              # released: the file is gone


def test_lock_acquire_release_churn_has_one_holder_at_a_time(tmp_path):
    """Threads that take and release the lock in a loop (the release deletes the file): never two
    holders at once, and every thread gets it sometimes."""
    active, peak, wins = [0], [0], {}
    guard = threading.Lock()
    stop = time.monotonic() + 1.5

    def worker(i):
        while time.monotonic() < stop:
            lock = GridLock(tmp_path)
            try:
                lock.__enter__()
            except UserError:
                continue
            with guard:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                wins[i] = wins.get(i, 0) + 1
            time.sleep(0.0005)
            with guard:
                active[0] -= 1
            lock.__exit__(None, None, None)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert peak[0] == 1 and sum(wins.values()) > 50, (peak, wins)


def test_lock_across_processes_and_after_a_crash(tmp_path, repo_root):
    """A grid in another process holds the lock: the message names its pid and command and suggests
    no kill.  When that process dies without cleaning up (SIGKILL), its lock file stays behind but the
    lock is free at once."""
    code = ("import sys, time; from harness.lock import GridLock; l = GridLock(sys.argv[1]).__enter__(); "
            "print('held', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as e:
            GridLock(tmp_path).__enter__()
        msg = str(e.value)
        assert f"pid {p.pid}" in msg and "-c" in msg and "kill" not in msg, msg
        counted()
    finally:
        p.kill()
        p.wait()
    assert (tmp_path / ".grid.lock").exists()                  # the crash left the file
    with GridLock(tmp_path):                                   # ... and it is harmless
        assert str(os.getpid()) == (tmp_path / ".grid.lock").read_text().split("\n")[0]


def test_stale_lock_naming_a_live_unrelated_process_is_ignored(tmp_path):
    (tmp_path / ".grid.lock").write_text(str(os.getppid()))    # alive, and not a grid
    with GridLock(tmp_path) as lock:
        assert lock._fd is not None
    assert not (tmp_path / ".grid.lock").exists()


def test_adapter_kwargs_are_add_lora_arguments_with_legacy_defaults():
    import inspect

    import lora
    from harness.config import adapter_kwargs
    cfg = make_config("mrpc", "svd", "v2", seed=3, rslora=True, dropout_mask="int16")
    kw = adapter_kwargs(cfg)
    assert set(kw) <= set(inspect.signature(lora.add_lora).parameters)
    assert kw == dict(rank=8, alpha=16.0, dropout=0.1, init="svd", svd_method="full", niter=4, seed=3,
                      rslora=True, dropout_mask="int16")
    old = {k: v for k, v in cfg.items() if k not in ("rslora", "dropout_mask")}   # a config from before those fields
    assert adapter_kwargs(old)["rslora"] is False and adapter_kwargs(old)["dropout_mask"] == "torch"
