"""Small synthetic GLUE-shaped data for the ``smoke`` preset and the tests.

``write_fixture(root)`` writes MRPC, RTE and CoLA in the classic GLUE layout, with the real
files' quirks (MRPC's BOM, CoLA without header or final newline, bare ``"`` in sentences),
and ``write_hub_fixture(root)`` writes the same examples as a local copy of the
``nyu-mll/glue`` hub repository (parquet per config), so both data sources can be compared.
The labels follow a simple rule (a word that marks agreement), so a tiny model learns them
in seconds.
"""
from __future__ import annotations

import random
from pathlib import Path

from .data import Example, write_glue_tsv
from .tasks import TASKS

FIXTURE_TASKS = ("mrpc", "rte", "cola")
NOUNS = "cat dog bird judge river company city teacher storm market".split()
VERBS = "sees likes follows avoids praises reports joins leaves".split()
SIZES = {"train": 96, "dev": 48}


def _sentence(rng: random.Random) -> str:
    s = f"the {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}"
    return s if rng.random() < 0.7 else f'{s} "quietly"'     # bare quotes, as in MRPC/RTE


def make_examples(task: str, split: str, seed: int = 0) -> list[Example]:
    """Deterministic synthetic examples; label 1 (pair tasks: 0 for RTE's 'entailment') is learnable."""
    rng = random.Random(f"{task}-{split}-{seed}")
    out = []
    for i in range(SIZES[split]):
        y = i % 2
        a = _sentence(rng)
        if task == "cola":
            words = a.split()
            out.append(Example((a if y else " ".join(reversed(words)),), y))
        elif task == "stsb":     # score 0..5: the fewer content words of a replaced in b, the higher
            score, words = float(i % 6), a.split()
            for j in rng.sample([1, 2, 4], round((5 - score) * 3 / 5)):
                words[j] = rng.choice(VERBS if j == 2 else NOUNS)
            out.append(Example((a, " ".join(words).replace("the", "a", 1)), score))
        else:
            b = a.replace("the", "a", 1) + (" indeed" if y else " never")
            label = y if task == "mrpc" else 1 - y          # RTE: entailment is id 0
            out.append(Example((a, b), label))
    return out


def write_fixture(root: str | Path, tasks=FIXTURE_TASKS) -> Path:
    """Classic GLUE layout under ``root``; returns ``root``."""
    root = Path(root)
    for name in tasks:
        task = TASKS[name]
        for split in SIZES:
            path = root / task.dir / f"{split}.tsv"
            write_glue_tsv(path, task, make_examples(name, split))
            text = path.read_text(encoding="utf-8")
            if name == "mrpc":
                path.write_text("\ufeff" + text, encoding="utf-8")
            if name == "cola" and split == "dev":
                path.write_text(text.rstrip("\n"), encoding="utf-8")
    return root


def write_hub_fixture(root: str | Path, tasks=FIXTURE_TASKS) -> Path:
    """The same examples as a local dataset repository shaped like ``nyu-mll/glue``."""
    import pandas as pd

    root = Path(root)
    configs = []
    for name in tasks:
        task = TASKS[name]
        files = []
        for split, hub_split in (("train", "train"), ("dev", task.hub_dev_split)):
            rows = [{**dict(zip(task.hub_text, ex.texts)), "label": ex.label, "idx": i}
                    for i, ex in enumerate(make_examples(name, split))]
            path = root / task.hub_config / f"{hub_split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_parquet(path, index=False)
            files.append(f"  - split: {hub_split}\n    path: {task.hub_config}/{hub_split}-*.parquet")
        configs.append(f"- config_name: {task.hub_config}\n  data_files:\n" + "\n".join(files))
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n# GLUE fixture\n")
    return root


WRITABLE_TASKS = ("mrpc", "rte", "cola", "stsb")


def main(argv=None) -> int:
    """``python -m harness.fixtures DIR [--tasks ...] [--hub]``: write the fixture to DIR and say where."""
    import argparse
    import sys

    from .paths import resolve
    from .tasks import UserError, task_label

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message):          # one line, like every harness command's errors
            print(f"error: {self.prog}: {message} (see {self.prog} -h)", file=sys.stderr)
            raise SystemExit(2)

    ap = OneLineParser(prog="python -m harness.fixtures",
                                 description="Write the synthetic GLUE fixture (what the smoke preset and the "
                                             "tests train on) in the classic GLUE layout DIR/<TASK>/{train,dev}.tsv.")
    ap.add_argument("dir", metavar="DIR", help="where to write it (relative paths: from the repository root)")
    ap.add_argument("--tasks", nargs="+", default=list(FIXTURE_TASKS),
                    help=f"default: {' '.join(FIXTURE_TASKS)}; valid: {' '.join(WRITABLE_TASKS)}")
    ap.add_argument("--hub", action="store_true", help="write a local copy shaped like the nyu-mll/glue hub "
                                                       "repository (parquet) instead")
    args = ap.parse_args(argv)
    try:
        bad = [t for t in args.tasks if t not in WRITABLE_TASKS]
        if bad:
            raise UserError(f"unknown fixture task {bad[0]!r}; valid: {', '.join(WRITABLE_TASKS)}")
        root = resolve(args.dir)
        if root.exists() and not root.is_dir():
            raise UserError(f"{args.dir!r} is a file; give a directory")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tasks = tuple(dict.fromkeys(args.tasks))
    (write_hub_fixture if args.hub else write_fixture)(root, tasks)
    kind = "a local nyu-mll/glue copy" if args.hub else "the classic GLUE layout"
    print(f"wrote the GLUE fixture ({', '.join(task_label(t) for t in tasks)}; {SIZES['train']} train and "
          f"{SIZES['dev']} dev examples each) in {kind} to {root}")
    if not args.hub:
        print(f"train on it: python -m harness grid configs/smoke.yaml --data-dir {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
