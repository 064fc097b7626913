"""``python -m harness check [DIR]``: verify every log under ``DIR`` (default ``logs``), one line per problem.

For each directory (``DIR`` and those below it):

* every ``*.json`` parses (:func:`harness.logs.load_json`);
* a run log (``<run_id>.json``) is well formed (:func:`harness.logs.run_log_problem`: the fields, their types,
  a known status, the history's shape), its ``config_hash`` is the hash of its config and its run id is the
  one the config gives (so the file name names the config: :func:`harness.config.run_id`; the fields of
  :data:`harness.config.LEGACY` at their round-1 values stay out of the hash), its config passes
  :func:`harness.validate.validate_config`, an ok run has what figures need
  (:func:`harness.logs.complete_run_problem`) and the factor file it names is a complete safetensors file;
* a planted-update log (``"kind": "planted"``) is named after its (subspace, init, seed) and has a known status;
* no other JSON object sits among run logs; no factor file or executed notebook lacks its log;
* no temporary file of an interrupted write is left (``*.tmp``, ``.*.tmp.ipynb``).

Directories without run logs may hold other JSON documents (``logs/capture``, the benchmarks): they need
only parse.
"""
from __future__ import annotations

from pathlib import Path

from .logs import complete_run_problem, factors_problem, is_run_log, load_json, run_log_problem

PLANTED_STATUSES = ("ok", "failed", "diverged")


def check_logs(root: str | Path) -> tuple[list[str], int]:
    """(one ``<path>: <problem>`` line per problem, the number of files looked at) for ``root`` and every
    directory below it."""
    root = Path(root)
    problems, n = [], 0
    for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        found, k = check_dir(d)
        problems += found
        n += k
    return problems, n


def check_dir(d: Path) -> tuple[list[str], int]:
    """The problems of the files directly in ``d``, and how many files it holds."""
    files = sorted(p for p in d.iterdir() if not p.is_dir())
    problems: dict[Path, str] = {}
    runs, documents = {}, []
    for p in files:
        if p.name.endswith((".tmp", ".tmp.ipynb")):
            problems[p] = "a temporary file of an interrupted write (the next grid call here removes it)"
        elif p.suffix == ".json":
            obj, why = load_json(p)
            if why is None and not is_run_log(p.name, obj):
                documents.append((p, obj))
                continue
            why = why or run_log_problem(obj) or run_log_consistency(obj, p, d)
            if why:
                problems[p] = why
            else:
                runs[p.stem] = obj
    for p, obj in documents:
        if runs:
            problems[p] = "not a run log (no run_id) in a directory of run logs"
        elif isinstance(obj, dict) and obj.get("kind") == "planted":
            why = planted_problem(obj, p.name)
            if why:
                problems[p] = why
    logged = {p.stem for p in files if p.suffix == ".json"}
    for p in files:
        if p.suffix in (".safetensors", ".ipynb") and not p.name.startswith(".") and p.stem not in logged:
            what = "factor file" if p.suffix == ".safetensors" else "executed notebook"
            problems[p] = f"{what} without its log {p.stem}.json (a run stopped before its log; rerun its config)"
        elif p.suffix == ".safetensors" and p.stem in runs and runs[p.stem].get("factors_file") != p.name:
            problems[p] = f"factor file that its log {p.stem}.json does not name"
    return [f"{p}: {why}" for p, why in sorted(problems.items())], len(files)


def run_log_consistency(log: dict, path: Path, d: Path) -> str | None:
    """For a well-formed run log at ``path`` in ``d``: why its name, id, config, hash or factor file disagree,
    or None."""
    from .config import config_hash, run_id
    from .tasks import UserError
    from .validate import validate_config
    if path.name != f"{log['run_id']}.json":
        return f"run_id {log['run_id'][:80]!r} is not the file's name"
    if not isinstance(log["config_hash"], str):
        return f"config_hash is a {type(log['config_hash']).__name__}, not a string"
    cfg = log["config"]
    try:
        h, rid = config_hash(cfg), run_id(cfg)
    except Exception as e:      # a config whose fields cannot even be hashed
        return f"config has no run id ({type(e).__name__}: {str(e)[:80]})"
    if h != log["config_hash"]:
        return f"config_hash {log['config_hash'][:16]}... is not the hash of its config ({h[:16]}...)"
    if rid != log["run_id"]:
        return f"its config gives the run id {rid}, not the file's"
    try:
        validate_config(cfg)
    except UserError as e:
        return f"config: {e}"
    return complete_run_problem(log) or factors_problem(log, d)


def planted_problem(log: dict, name: str) -> str | None:
    """Why a planted-update log (harness/planted.py) named ``name`` is not a complete one, or None."""
    from .planted import log_name
    cfg = log.get("config")
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("subspace", "init", "seed")):
        return "planted log without config.subspace, init and seed"
    if log.get("name") != name or log_name(cfg["subspace"], cfg["init"], cfg["seed"]) != name:
        return "planted log whose name or config is not the file's name"
    if log.get("status") not in PLANTED_STATUSES:
        return f"planted log with status {str(log.get('status'))[:40]!r}; valid: {', '.join(PLANTED_STATUSES)}"
    if log["status"] == "ok" and not isinstance(log.get("final"), dict):
        return "ok planted log without final results"
    return None
