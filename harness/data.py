"""GLUE examples from a local directory (classic GLUE layout) or from the Hugging Face hub.

Both sources yield the same thing: for each split ("train", "dev") a list of
``Example(texts=(str, ...), label=int|float)``, plus a record of where it came from
(files and their sha256) for the run log.

Local files keep the quirks of the official GLUE release: CoLA has no header; MRPC starts
with a UTF-8 BOM; MRPC and RTE contain bare ``"`` characters, so rows are split on tabs
with quoting off.  Real runs point at them with ``data_dir=...`` or ``GLUE_DIR``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .tasks import Task, UserError

HUB_ID = "nyu-mll/glue"
SPLITS = ("train", "dev")
MAX_LINE_BYTES = 1 << 16    # a row of the GLUE files is under 2 KB


@dataclass(frozen=True)
class Example:
    texts: tuple[str, ...]
    label: int | float


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_glue_tsv(path: Path, task: Task) -> list[Example]:
    """Parse one classic GLUE TSV file; a malformed row raises UserError naming file and line."""
    try:
        raw = _read_rows(Path(path))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw     # MRPC's UTF-8 BOM
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:      # a binary or non-UTF-8 file
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                        f"expected a tab-separated GLUE file") from None
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    start = 0
    if task.has_header:
        if not lines:
            raise UserError(f"{path}: empty file, expected a header row")
        header = lines[0].split("\t")
        try:
            text_cols = [header.index(c) for c in task.tsv_text]
            label_col = header.index(task.tsv_label)
        except ValueError:
            want = [*task.tsv_text, task.tsv_label]
            raise UserError(f"{path} line 1: header {header} lacks one of the columns {want}") from None
        start, width = 1, len(header)
    else:
        text_cols, label_col = list(task.tsv_text), task.tsv_label
        width = max(*text_cols, label_col) + 1
    examples = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        fields = line.split("\t")
        if len(fields) < width:
            raise UserError(f"{path} line {lineno}: expected {width} tab-separated fields, got {len(fields)}")
        raw = fields[label_col].strip()
        try:
            label = task.label_id(raw)
        except ValueError:
            valid = "a number" if task.labels is None else ", ".join(task.labels)
            raise UserError(f"{path} line {lineno}: label {raw!r} is not one of {valid}") from None
        examples.append(Example(tuple(fields[c] for c in text_cols), label))
    if not examples:
        raise UserError(f"{path}: no examples")
    return examples


def _read_rows(path: Path) -> bytes:
    """The file's bytes, read a line at a time so that a line longer than :data:`MAX_LINE_BYTES` is refused,
    naming it, before it is held in memory."""
    lines = []
    with open(path, "rb") as f:
        while line := f.readline(MAX_LINE_BYTES + 2):
            if len(line.rstrip(b"\r\n")) > MAX_LINE_BYTES:
                raise UserError(f"{path} line {len(lines) + 1}: longer than {MAX_LINE_BYTES:,} bytes; a GLUE row "
                                f"is a few sentences")
            lines.append(line)
    return b"".join(lines)


def check_local(task_names, data_dir: str | os.PathLike | None = None) -> None:
    """Read the local files of every task in ``task_names`` (a bi-encoder task: its pair task's) once, so that a
    command refuses a missing or malformed file before it starts work.  Nothing to check for the hub."""
    from .tasks import TASKS, get_task
    data_dir = data_dir or os.environ.get("GLUE_DIR")
    if not data_dir:
        return
    for name in dict.fromkeys(getattr(t, "pair_task", t.name) for t in map(get_task, task_names)):
        load_local(TASKS[name], data_dir)


def load_local(task: Task, data_dir: str | os.PathLike) -> tuple[dict[str, list[Example]], dict]:
    root = Path(data_dir).expanduser()
    task_dir = root / task.dir
    paths = {"train": task_dir / "train.tsv", "dev": task_dir / task.dev_file}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"data directory {str(root)!r} lacks {', '.join(missing)}; expected the classic GLUE "
                        f"layout <dir>/{task.dir}/train.tsv and <dir>/{task.dir}/{task.dev_file}")
    splits = {s: read_glue_tsv(p, task) for s, p in paths.items()}
    source = {"kind": "local", "dir": str(root.resolve()),
              "files": {f"{task.dir}/{p.name}": sha256_of(p) for p in paths.values()}}
    return splits, source


def load_hub(task: Task, hub_id: str = HUB_ID) -> tuple[dict[str, list[Example]], dict]:
    """Read ``hub_id`` (``nyu-mll/glue``, or a local copy of that repository) with ``datasets``."""
    try:
        import datasets
        ds = datasets.load_dataset(hub_id, task.hub_config)
    except Exception as e:  # offline, missing package, unknown repo: all end the same way for the user
        raise UserError(
            f"could not load {hub_id!r} config {task.hub_config!r} from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); without network, pass "
            f"--data-dir DIR (or set GLUE_DIR) pointing at the classic GLUE files DIR/{task.dir}/train.tsv, "
            f"DIR/{task.dir}/{task.dev_file}") from None
    splits = {}
    for split, hub_split in (("train", "train"), ("dev", task.hub_dev_split)):
        d = ds[hub_split]
        cols = [d[c] for c in task.hub_text]
        splits[split] = [Example(tuple(t), lab) for t, lab in zip(zip(*cols), d["label"])]
    fingerprints = {s: ds[h]._fingerprint for s, h in (("train", "train"), ("dev", task.hub_dev_split))}
    return splits, {"kind": "hub", "id": hub_id, "config": task.hub_config, "fingerprints": fingerprints}


def load_task_data(task: Task, data_dir: str | os.PathLike | None = None, hub_id: str = HUB_ID):
    """Local files when ``data_dir`` (or ``$GLUE_DIR``) is given, otherwise the hub."""
    data_dir = data_dir or os.environ.get("GLUE_DIR")
    if data_dir:
        return load_local(task, data_dir)
    return load_hub(task, hub_id)


def write_glue_tsv(path: Path, task: Task, examples: list[Example]) -> None:
    """Write examples in the task's classic GLUE layout (for fixtures and round-trip tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n_cols = (max(*task.tsv_text, task.tsv_label) + 1) if not task.has_header else None
    rows = []
    if task.has_header:
        rows.append("\t".join([*task.tsv_text, task.tsv_label]))
    for ex in examples:
        raw = str(ex.label) if task.labels is None else task.labels[ex.label]
        if task.has_header:
            rows.append("\t".join([*ex.texts, raw]))
        else:
            fields = [""] * n_cols
            for c, t in zip(task.tsv_text, ex.texts):
                fields[c] = t
            fields[task.tsv_label] = raw
            rows.append("\t".join(fields))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


VAL_SPLIT_SEED = 0   # one fixed hold-out for every run and seed of a task


def split_validation(examples: list[Example], task: Task, fraction: float,
                     seed: int = VAL_SPLIT_SEED) -> tuple[list[Example], list[Example], dict]:
    """Carve a fixed, stratified validation split out of the training examples.

    Stratified by label (a regression task by the quintile of its score), so each class keeps its
    share; within a stratum the held-out examples are a seeded random choice of round(fraction·n)
    (at least one).  The same (examples, fraction, seed) always give the same split, independent of
    the run's seed.  Returns (train_rest, validation, info); ``info`` records the fraction, the sizes
    and the sha256 of the sorted held-out indices, for the run log.
    """
    import numpy as np
    if not 0 < fraction < 1:
        raise UserError(f"val_fraction {fraction!r} is not in (0, 1)")
    labels = np.array([ex.label for ex in examples], dtype=float)
    if task.labels is None:     # regression: strata are score quintiles
        edges = np.quantile(labels, [0.2, 0.4, 0.6, 0.8])
        strata = np.searchsorted(edges, labels, side="right")
    else:
        strata = labels.astype(int)
    rng = np.random.default_rng(seed)
    held = []
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        k = max(1, int(round(fraction * len(idx))))
        held.extend(rng.choice(idx, size=min(k, len(idx) - 1) if len(idx) > 1 else 0, replace=False).tolist())
    held = sorted(held)
    if not held or len(held) >= len(examples):
        raise UserError(f"cannot hold out a validation split of {fraction} from {len(examples)} examples")
    held_set = set(held)
    train = [ex for i, ex in enumerate(examples) if i not in held_set]
    val = [examples[i] for i in held]
    digest = hashlib.sha256(",".join(map(str, held)).encode()).hexdigest()
    return train, val, {"fraction": fraction, "seed": seed, "n_train": len(train), "n_val": len(val),
                        "indices_sha256": digest}
