"""Where a run's code and packages came from: the commit, whether the code was edited, and the lock.

A run log's ``env`` records :func:`code_state` and :func:`lock_state`; a grid refuses to start from a tree
whose run-side code differs from its commit (:func:`refuse_dirty`), so that every committed log names the code
that made it.  Only the files that decide what a run computes count (:data:`CODE_PATHS`): new logs, figures or
notes beside a running grid do not make the tree dirty.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from .tasks import UserError

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.txt"
CODE_PATHS = ("lora", "harness", "notebooks/train.ipynb", "configs", "pyproject.toml", "requirements.txt")
ALLOW_DIRTY_ENV = "HARNESS_ALLOW_DIRTY"       # "1": start grids from a dirty tree (tests, quick experiments)
# Packages whose versions every log lists by name (the rest: see lock_state's `differs`).
KEY_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "scipy")


def code_state() -> dict:
    """``{"git_commit": sha or None, "git_dirty": bool or None, "dirty_files": [...]}``.  Without a ``.git``
    (a copy of the tree on a GPU machine) the values come from HARNESS_GIT_COMMIT / HARNESS_GIT_DIRTY."""
    try:
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}     # `git status` must not take the index lock
        head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, env=env)
        commit = head.stdout.strip() if head.returncode == 0 else None
        changed = subprocess.run(["git", "status", "--porcelain", "--", *CODE_PATHS], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=10).stdout.splitlines() if commit else []
    except (OSError, subprocess.SubprocessError):
        commit, changed = None, []
    if commit is None:
        if os.environ.get("HARNESS_GIT_COMMIT"):
            return {"git_commit": os.environ["HARNESS_GIT_COMMIT"],
                    "git_dirty": os.environ.get("HARNESS_GIT_DIRTY") == "1", "dirty_files": []}
        return {"git_commit": None, "git_dirty": None, "dirty_files": []}
    files = sorted(line[3:] for line in changed)
    return {"git_commit": commit, "git_dirty": bool(files), "dirty_files": files[:20]}


def refuse_dirty(allow_dirty: bool = False) -> None:
    """A UserError if the run-side code differs from the commit, unless ``allow_dirty`` (or
    HARNESS_ALLOW_DIRTY=1): the logs would name a commit that did not make them."""
    if allow_dirty or os.environ.get(ALLOW_DIRTY_ENV) == "1":
        return
    state = code_state()
    if state["git_dirty"]:
        files = state["dirty_files"]
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise UserError(f"the code differs from commit {state['git_commit'][:10]} ({shown}); commit it first, "
                        f"or pass --allow-dirty to log git_dirty: true")


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@lru_cache(maxsize=1)
def lock_state() -> dict:
    """The lock this environment should match and how it does: ``lock_sha256`` (of requirements.txt),
    ``packages`` (the versions of :data:`KEY_PACKAGES`), ``differs`` (every locked package installed at another
    version, or missing: ``{name: [locked, installed or None]}``; empty when the install is the lock)."""
    try:
        text = LOCK.read_text()
    except OSError:
        return {"lock_sha256": None, "packages": _versions(KEY_PACKAGES), "differs": None}
    pins = {_norm(n): v for n, v in _PIN.findall(text)}
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    differs = {n: [v, installed.get(n)] for n, v in sorted(pins.items()) if installed.get(n) != v}
    return {"lock_sha256": hashlib.sha256(text.encode()).hexdigest(), "packages": _versions(KEY_PACKAGES),
            "differs": differs}


def _versions(names) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out
