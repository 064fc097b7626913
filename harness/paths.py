"""Where the study's files are: one rule for every command and notebook.

A relative path (``--out-dir``, ``--logs``, a grid spec, ``--data-dir``, ``$GLUE_DIR``, a notebook's
``log_dir``) is taken from the repository root, never from the current directory, so
``logs/quick`` means the same directory whether a command runs from the root, a notebook kernel
starts in ``notebooks/``, or papermill runs somewhere else.  The root is ``$STUDY_ROOT`` when set
(a copy of the tree elsewhere, e.g. in the tests), else the checkout this package lives in.

Paths stay relative (``figures/quick/x.png``, not ``/home/.../figures/quick/x.png``) in what the
figures write (manifests, captions): the commands and notebooks change into the root instead of
making paths absolute, so rebuilt figures are byte-identical wherever the checkout lies.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .tasks import UserError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def repo_root() -> Path:
    """The study's root directory: ``$STUDY_ROOT`` if set, else the checkout holding this package."""
    env = os.environ.get("STUDY_ROOT")
    if not env:
        return PACKAGE_ROOT
    root = Path(env).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"$STUDY_ROOT {env!r} is not a directory; unset it to use the checkout {PACKAGE_ROOT}")
    return root


def resolve(path: str | os.PathLike) -> Path:
    """``path`` as an absolute path: ``~`` expanded, a relative path taken from :func:`repo_root`."""
    return (repo_root() / Path(path).expanduser()).resolve()


@contextlib.contextmanager
def at_repo_root():
    """Run a block with the repository root as working directory (restored afterwards)."""
    before = os.getcwd()
    os.chdir(repo_root())
    try:
        yield repo_root()
    finally:
        os.chdir(before)


def use_repo_root() -> None:
    """Make the repository root the working directory for good (a notebook's first cell)."""
    os.chdir(repo_root())


class NoLogs(UserError):
    """A log directory that is missing or holds no run logs; in a notebook it shows as its one line."""

    def _render_traceback_(self):      # IPython prints this instead of a traceback
        return [f"NoLogs: {self}"]


def has_run_logs(log_dir: str | os.PathLike) -> bool:
    """Whether ``log_dir`` holds at least one valid run log (``<run_id>.json``)."""
    from .logs import read_log
    d = resolve(log_dir)
    return d.is_dir() and any(read_log(p) is not None for p in sorted(d.glob("*.json")))


def grids_with_logs(logs_root: str | os.PathLike = "logs") -> list[str]:
    """Names of the subdirectories of ``logs_root`` that hold run logs, sorted."""
    root = resolve(logs_root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and has_run_logs(d))


def require_logs(log_dir: str | os.PathLike) -> str | os.PathLike:
    """``log_dir`` unchanged if it holds run logs; else :class:`NoLogs` naming it and the grids there are."""
    if has_run_logs(log_dir):
        return log_dir
    d = resolve(log_dir)
    what = "does not exist" if not d.exists() else "is not a directory" if not d.is_dir() else "holds no run logs"
    parent = d.parent if d.parent.is_dir() and grids_with_logs(d.parent) else resolve("logs")
    grids = grids_with_logs(parent)
    shown = _shown(parent)
    there = (f"grids with logs under {shown}: {', '.join(grids)}" if grids
             else f"no grid under {shown} has logs yet (run one: python -m harness grid configs/quick.yaml)")
    raise NoLogs(f"log directory {str(log_dir)!r} ({d}) {what}; {there}")


def grid_figures_dir(log_dir: str | os.PathLike) -> Path:
    """Where a grid's figures go: ``figures/<grid>`` (relative to the root), ``<grid>`` the log directory's name."""
    return Path("figures") / resolve(log_dir).name


def _shown(path: Path) -> str:
    """``path`` relative to the root when inside it (shorter, and the same on every machine)."""
    try:
        return str(path.relative_to(repo_root()))
    except ValueError:
        return str(path)
