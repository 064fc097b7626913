"""Tests of the harness's data, tasks, metrics and configs (no training; seconds).

The synthetic fixture is written in both forms (classic GLUE TSV with the real files' quirks, and
a local copy of the hub repository read by ``datasets``) and the two must give the same examples.
Errors are ``UserError``s of one line that name the bad value and what would be valid.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from harness.config import DEFAULTS, PRESETS, config_hash, make_config, run_id
from harness.data import Example, load_hub, load_local, load_task_data, read_glue_tsv
from harness.fixtures import FIXTURE_TASKS, SIZES, make_examples
from harness.tasks import TASKS, UserError, compute_metrics, get_task, majority_baseline, order_tasks, task_label

pytestmark = pytest.mark.usefixtures("hf_offline")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


# ----------------------------------------------------------------------------- the two data sources
@pytest.mark.parametrize("name", FIXTURE_TASKS)
def test_fixture_local_and_hub_give_identical_examples(name, glue_fixture, hub_fixture):
    task = get_task(name)
    local, lsrc = load_local(task, glue_fixture)
    hub, hsrc = load_hub(task, hub_id=str(hub_fixture))
    for split in ("train", "dev"):
        assert len(local[split]) == SIZES[split]
        assert local[split] == hub[split], f"{name} {split}: local TSV and hub copy differ"
        assert local[split] == make_examples(name, split)
    assert all(type(ex.label) is int for ex in local["train"] + hub["train"])
    assert lsrc["kind"] == "local" and Path(lsrc["dir"]) == glue_fixture.resolve()
    assert set(lsrc["files"]) == {f"{task.dir}/train.tsv", f"{task.dir}/dev.tsv"}
    assert hsrc["kind"] == "hub" and hsrc["id"] == str(hub_fixture) and hsrc["config"] == task.hub_config
    assert set(hsrc["fingerprints"]) == {"train", "dev"}


def test_load_task_data_prefers_data_dir_then_glue_dir(glue_fixture, hub_fixture, monkeypatch):
    task = get_task("rte")
    splits, src = load_task_data(task, glue_fixture, hub_id="no/such-repo")
    assert src["kind"] == "local" and splits["dev"] == make_examples("rte", "dev")
    monkeypatch.setenv("GLUE_DIR", str(glue_fixture))
    splits, src = load_task_data(task, None, hub_id="no/such-repo")
    assert src["kind"] == "local" and splits["train"] == make_examples("rte", "train")
    monkeypatch.delenv("GLUE_DIR")
    splits, src = load_task_data(task, None, hub_id=str(hub_fixture))
    assert src["kind"] == "hub" and splits["train"] == make_examples("rte", "train")


# ----------------------------------------------------------------------------- format quirks
def test_mrpc_bom_is_stripped_and_header_parsed(glue_fixture, tmp_path):
    raw = (glue_fixture / "MRPC" / "train.tsv").read_bytes()
    assert raw.startswith("\ufeff".encode()) and b"Quality" in raw.split(b"\n")[0]   # BOM, then the header
    splits, _ = load_local(get_task("mrpc"), glue_fixture)
    first = splits["train"][0]
    assert not first.texts[0].startswith("\ufeff")
    assert first == make_examples("mrpc", "train")[0]
    assert len(splits["train"]) == SIZES["train"]                # the header is not a row

    # the real header (with the ID columns), BOM first: columns found by name
    p = tmp_path / "mrpc.tsv"
    p.write_text("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                 "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him , Amrozi accused .\n"
                 "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's .\n", encoding="utf-8")
    ex = read_glue_tsv(p, get_task("mrpc"))
    assert ex == [Example(("Amrozi accused his brother .", "Referring to him , Amrozi accused ."), 1),
                  Example(("Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."), 0)]


def test_cola_no_header_no_final_newline_gives_all_rows(glue_fixture, tmp_path):
    raw = (glue_fixture / "CoLA" / "dev.tsv").read_text(encoding="utf-8")
    assert not raw.endswith("\n")
    splits, _ = load_local(get_task("cola"), glue_fixture)
    assert len(splits["dev"]) == SIZES["dev"] == raw.count("\n") + 1
    assert splits["dev"][-1] == make_examples("cola", "dev")[-1]
    assert splits["dev"][0] == make_examples("cola", "dev")[0]   # first row is data, not a header

    p = tmp_path / "cola.tsv"
    p.write_text("gj04\t1\t\tOur friends won't buy this analysis.\n"
                 "gj04\t0\t*\tThey drank the pub.", encoding="utf-8")
    assert read_glue_tsv(p, get_task("cola")) == [Example(("Our friends won't buy this analysis.",), 1),
                                                  Example(("They drank the pub.",), 0)]


def test_bare_quotes_kept_verbatim_and_rows_not_merged(glue_fixture, tmp_path):
    splits, _ = load_local(get_task("mrpc"), glue_fixture)
    quoted = [ex for ex in splits["train"] if '"' in ex.texts[0]]
    assert quoted and all(ex.texts[0].endswith('"quietly"') for ex in quoted)

    # an unbalanced quote would make a csv reader swallow the following rows
    p = tmp_path / "rte.tsv"
    p.write_text('index\tsentence1\tsentence2\tlabel\n'
                 '0\tHe said "hello.\tA greeting was "made\tentailment\n'
                 '1\t"Quoted" start\tplain\tnot_entailment\n'
                 '2\tthird\t"\tentailment\n', encoding="utf-8")
    ex = read_glue_tsv(p, get_task("rte"))
    assert ex == [Example(('He said "hello.', 'A greeting was "made'), 0),
                  Example(('"Quoted" start', "plain"), 1),
                  Example(("third", '"'), 0)]


def test_rte_label_strings_map_entailment_to_zero(glue_fixture):
    raw = (glue_fixture / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()
    raw_labels = [ln.split("\t")[-1] for ln in raw[1:]]
    assert set(raw_labels) == {"entailment", "not_entailment"}
    splits, _ = load_local(get_task("rte"), glue_fixture)
    assert [ex.label for ex in splits["train"]] == [0 if r == "entailment" else 1 for r in raw_labels]


# ----------------------------------------------------------------------------- metrics
def test_mrpc_accuracy_and_f1_by_hand():
    y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 1]
    p = [1, 1, 1, 0, 0, 0, 0, 1, 0, 1]
    tp = sum(a == 1 and b == 1 for a, b in zip(y, p))      # 4
    tn = sum(a == 0 and b == 0 for a, b in zip(y, p))      # 3
    fp = sum(a == 0 and b == 1 for a, b in zip(y, p))      # 1
    fn = sum(a == 1 and b == 0 for a, b in zip(y, p))      # 2
    assert (tp, tn, fp, fn) == (4, 3, 1, 2)
    m = compute_metrics(get_task("mrpc"), p, y)
    assert set(m) == {"accuracy", "f1"}
    assert m["accuracy"] == pytest.approx((tp + tn) / len(y)) == pytest.approx(0.7)
    prec, rec = tp / (tp + fp), tp / (tp + fn)
    assert m["f1"] == pytest.approx(2 * prec * rec / (prec + rec)) == pytest.approx(8 / 11)
    assert all(type(v) is float for v in m.values())


def test_cola_mcc_by_hand():
    # TP=3, TN=2, FP=1, FN=1: MCC = (3·2 − 1·1) / sqrt((3+1)(3+1)(2+1)(2+1)) = 5/12
    y = [1, 1, 1, 0, 0, 0, 1]
    p = [1, 1, 1, 0, 0, 1, 0]
    m = compute_metrics(get_task("cola"), p, y)
    assert m["mcc"] == pytest.approx(5 / 12, abs=1e-12)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert get_task("cola").main_metric == "mcc"


def test_rte_accuracy_and_stsb_correlations():
    assert compute_metrics(get_task("rte"), [0, 1, 1, 0, 1], [0, 1, 0, 0, 0]) == {"accuracy": pytest.approx(0.6)}
    x = np.array([0.1, 1.3, 2.0, 3.7, 4.4])
    m = compute_metrics(get_task("stsb"), 2.5 * x - 1.0, x)
    assert m["pearson"] == pytest.approx(1.0, abs=1e-12) and m["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert compute_metrics(get_task("stsb"), -x, x)["pearson"] == pytest.approx(-1.0, abs=1e-12)


def test_majority_baseline():
    y = [1, 1, 1, 0, 1, 0, 1, 1]                  # 6 ones, 2 zeros: always predict 1
    b = majority_baseline(get_task("mrpc"), y)
    assert b["accuracy"] == pytest.approx(6 / 8)
    assert b["f1"] == pytest.approx(2 * 6 / (2 * 6 + 2))   # precision 6/8, recall 1
    rte = majority_baseline(get_task("rte"), [1, 0, 0, 0])  # entailment (0) is the majority
    assert rte == {"accuracy": pytest.approx(0.75)}
    assert majority_baseline(get_task("cola"), [1, 1, 0])["mcc"] == 0.0    # constant predictor
    assert majority_baseline(get_task("stsb"), [0.5, 1.0]) == {}


# ----------------------------------------------------------------------------- errors
def test_task_display_order_and_names():
    # the study's tasks first (as configs/quick.yaml lists them), then the registry's, then unknown ids
    assert order_tasks(["cola", "zzz", "stsb", "mrpc", "rte", "cola"]) == ["mrpc", "rte", "cola", "stsb", "zzz"]
    assert [task_label(t) for t in ("mrpc", "rte", "cola", "stsb", "zzz")] == ["MRPC", "RTE", "CoLA", "STS-B", "ZZZ"]


def test_unknown_task_lists_valid():
    with pytest.raises(UserError) as e:
        get_task("mprc")
    msg = one_line(e)
    assert "'mprc'" in msg and all(t in msg for t in TASKS)
    assert get_task("MRPC").name == "mrpc"


def test_data_dir_without_task_files(tmp_path):
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC" / "train.tsv").write_text("Quality\t#1 String\t#2 String\n1\ta\tb\n")
    with pytest.raises(UserError) as e:
        load_local(get_task("mrpc"), tmp_path)
    msg = one_line(e)
    assert str(tmp_path / "MRPC" / "dev.tsv") in msg
    assert str(tmp_path / "MRPC" / "train.tsv") not in msg.split(";")[0]   # only the missing one is named
    assert "<dir>/MRPC/train.tsv" in msg and "<dir>/MRPC/dev.tsv" in msg
    with pytest.raises(UserError) as e:
        load_task_data(get_task("rte"), tmp_path)
    assert str(tmp_path / "RTE" / "train.tsv") in one_line(e)


def test_malformed_tsv_too_few_fields_names_file_and_line(tmp_path):
    p = tmp_path / "MRPC" / "train.tsv"
    p.parent.mkdir()
    p.write_text("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                 "1\t1\t2\tgood row\tanother\n"
                 "0\t3\t4\tthis row lost a field\n"
                 "1\t5\t6\tx\ty\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_glue_tsv(p, get_task("mrpc"))
    msg = one_line(e)
    assert str(p) in msg and "line 3" in msg and "expected 5" in msg and "got 4" in msg


def test_malformed_tsv_bad_label_names_label_and_valid_ones(tmp_path):
    p = tmp_path / "rte.tsv"
    p.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tneutral\n")
    with pytest.raises(UserError) as e:
        read_glue_tsv(p, get_task("rte"))
    msg = one_line(e)
    assert str(p) in msg and "line 3" in msg and "'neutral'" in msg and "entailment, not_entailment" in msg

    c = tmp_path / "cola.tsv"
    c.write_text("src\t1\t\tfine\nsrc\t2\t*\tbad label")
    with pytest.raises(UserError) as e:
        read_glue_tsv(c, get_task("cola"))
    msg = one_line(e)
    assert "line 2" in msg and "'2'" in msg and "0, 1" in msg


def test_no_data_and_no_network_says_how_to_fix(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    with pytest.raises(UserError) as e:
        load_task_data(get_task("mrpc"), None, hub_id="nyu-mll/glue")
    msg = one_line(e)
    assert "'nyu-mll/glue'" in msg and "--data-dir" in msg and "GLUE_DIR" in msg
    assert "MRPC/train.tsv" in msg


def test_unknown_method_preset_and_field():
    with pytest.raises(UserError) as e:
        make_config("mrpc", "svdd", "quick")
    msg = one_line(e)
    assert "'svdd'" in msg and all(m in msg for m in ("full", "random", "svd", "lora_fa", "lora_fa_svd"))
    with pytest.raises(UserError) as e:
        make_config("mrpc", "svd", "tiny")
    msg = one_line(e)
    assert "'tiny'" in msg and all(p in msg for p in PRESETS)
    with pytest.raises(UserError) as e:
        make_config("mrpc", "svd", "smoke", learning_rate=1e-3)
    msg = one_line(e)
    assert "learning_rate" in msg and "lr" in msg and "max_train_examples" in msg
    with pytest.raises(UserError) as e:
        make_config("qnlii", "svd", "smoke")
    assert "'qnlii'" in one_line(e)


# ----------------------------------------------------------------------------- configs
def test_config_hash_stable_and_sensitive():
    cfg = make_config("mrpc", "svd", "quick")
    h = config_hash(cfg)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert config_hash(make_config("mrpc", "svd", "quick")) == h
    assert config_hash(dict(reversed(list(cfg.items())))) == h
    assert config_hash({**cfg, "data_dir": "/somewhere", "hub_id": "x/y", "out_dir": "logs/z"}) == h
    lr = cfg["lr"]                                 # the preset's default
    assert config_hash(make_config("mrpc", "svd", "quick", lr=2 * lr)) != h
    assert config_hash(make_config("mrpc", "svd", "quick", seed=1)) != h
    assert config_hash(make_config("mrpc", "random", "quick")) != h
    assert config_hash(make_config("mrpc", "svd", "quick", lr=lr)) == h   # same as the default: same run
    assert make_config("mrpc", "svd", "quick", lr=f"{lr:e}")["lr"] == lr   # YAML gives "5e-4" as a string


def test_run_id_format():
    cfg = make_config("mrpc", "svd", "quick", rank=8, lr=5e-4, seed=0)
    rid = run_id(cfg)
    assert re.fullmatch(r"mrpc-svd-r8-lr5e-4-s0-[0-9a-f]{8}", rid), rid
    assert rid.endswith(config_hash(cfg)[:8])
    assert run_id(make_config("cola", "lora_fa_svd", "smoke", seed=2, lr=1e-3)).startswith("cola-lorafasvd-r4-lr1e-3-s2-")
    assert run_id(make_config("rte", "random", "quick", lr=0.0025, seed=1)).startswith("rte-random-r8-lr2.5e-3-s1-")


def test_full_finetuning_config():
    cfg = make_config("mrpc", "full", "quick")
    assert cfg["rank"] is None and cfg["alpha"] is None and cfg["targets"] is None
    assert cfg["lr"] == PRESETS["quick"]["lr"]["full"] == 5e-5
    assert make_config("mrpc", "svd", "quick")["lr"] == PRESETS["quick"]["lr"]["lora"]
    assert re.fullmatch(r"mrpc-full-lr5e-5-s0-[0-9a-f]{8}", run_id(cfg))
    # rank is not an input of full fine-tuning: a rank override does not make another run
    assert config_hash(make_config("mrpc", "full", "quick", rank=16)) == config_hash(cfg)
    assert set(cfg) == set(DEFAULTS)


def test_preset_per_task_values():
    cfg = make_config("rte", "svd", "paper")
    assert (cfg["lr"], cfg["epochs"], cfg["batch_size"]) == (5e-4, 80, 32)
    assert make_config("rte", "full", "paper")["lr"] == 1e-5       # the per-task lr is for the adapters
    assert make_config("rte", "svd", "paper", epochs=2)["epochs"] == 2


# ----------------------------------------------------------------------------- the real GLUE files
README_COUNTS = {  # from shared/glue/README.md
    "cola": {"train": (8551, {1: 6023, 0: 2528}), "dev": (1043, {1: 721, 0: 322})},
    "mrpc": {"train": (3668, {1: 2474, 0: 1194}), "dev": (408, {1: 279, 0: 129})},
    "rte": {"train": (2490, {0: 1249, 1: 1241}), "dev": (277, {0: 146, 1: 131})},
}
README_SHA256 = {
    "MRPC/train.tsv": "69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3",
    "MRPC/dev.tsv": "9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17",
}


@pytest.mark.parametrize("name", sorted(README_COUNTS))
def test_real_glue_row_and_label_counts(name, real_glue_dir):
    task = get_task(name)
    splits, src = load_local(task, real_glue_dir)
    for split, (n, labels) in README_COUNTS[name].items():
        assert len(splits[split]) == n, f"{name} {split}"
        assert dict(Counter(ex.label for ex in splits[split])) == labels
        assert all(len(ex.texts) == len(task.hub_text) and all(ex.texts) for ex in splits[split])
        assert not splits[split][0].texts[0].startswith("\ufeff")
    for f, sha in README_SHA256.items():
        if f in src["files"]:
            assert src["files"][f] == sha


def test_real_mrpc_majority_baseline(real_glue_dir):
    splits, _ = load_local(get_task("mrpc"), real_glue_dir)
    b = majority_baseline(get_task("mrpc"), [ex.label for ex in splits["dev"]])
    assert b["accuracy"] == pytest.approx(279 / 408)
    assert b["f1"] == pytest.approx(2 * 279 / (2 * 279 + 129))
    assert math.isclose(b["f1"], 0.8122, abs_tol=1e-4)
