"""Command line: ``python -m harness {run,grid,status,figures,readme,planted,check}``.  ``-h`` on each for its options.

Relative paths (grid specs, --out-dir, --out, --logs, --readme, --data-dir and $GLUE_DIR) are taken from
the repository root, not the current directory: every command runs there ($STUDY_ROOT, if set, names
another copy of the tree to use as the root; harness/paths.py).

Every path is checked before work starts (a directory to write in, a file or directory to read), and a
refused command exits 2 with one ``error:`` line and leaves nothing behind, not even an empty directory.
SIGINT/SIGTERM stop a grid with one line (exit 128 + the signal's number)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .paths import at_repo_root, repo_root
from .tasks import UserError

FROM_ROOT = " (relative paths: from the repository root, not the current directory)"
MAX_ERROR_LINES = 20      # problem lines printed for corrupt logs (python -m harness check lists them all)
MAX_README_BYTES = 16 << 20


def _value(text: str):
    """``--set key=value``: the value as JSON if it parses (numbers, lists), else a string."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


class _ArgError(Exception):
    """A command-line syntax error (argparse's), shown as one line like a UserError."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one ``error:`` line (no usage block), exit 2."""

    def error(self, message):
        raise _ArgError(f"{self.prog}: {message} (see {self.prog} -h)")


def _one_line(msg, limit: int = 1000) -> str:
    """A message on one line, whatever the user's input put in it (a newline in a --set key), cut to ``limit``."""
    text = " ".join(str(msg).splitlines())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _shown(path) -> str:
    return repr(_one_line(path, 200))


def _startup_error(e: Exception, cfg: dict) -> tuple[str, int]:
    """One line for an exception that ended a run before it wrote a log, and the exit code:
    2 for a lora ValueError (a rank too large for a layer, targets that match nothing: the
    user's config), 1 otherwise.  ``HARNESS_DEBUG=1`` re-raises to show the traceback."""
    import traceback

    import lora
    from .config import run_id
    if os.environ.get("HARNESS_DEBUG"):
        raise e
    frames = traceback.extract_tb(e.__traceback__)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [repr(e)]
    if isinstance(e, ValueError) and frames and Path(frames[-1].filename).resolve().is_relative_to(
            Path(lora.__file__).resolve().parent):
        return lines[0][:500], 2
    return (f"run {run_id(cfg)} stopped before writing a log: {type(e).__name__}: {lines[-1][:300]} "
            f"(HARNESS_DEBUG=1 shows the traceback)"), 1


# ---------------------------------------------------------------------------------------------- paths
def _new_dirs(path: Path) -> list[Path]:
    """The directories ``path.mkdir(parents=True)`` would create, deepest first."""
    new = []
    for p in [path, *path.parents]:
        if os.path.lexists(p):
            break
        new.append(p)
    return new


def _writable_dir(path, flag: str, created: list) -> Path:
    """``path`` is a directory this command may write in, or can be made one: not a file, not under a file,
    names of at most 255 bytes, and its nearest existing directory takes a new file (tried: permissions,
    read-only mounts and /proc all show there).  The directories it would create are added to ``created``."""
    p = Path(path).expanduser()
    if any(len(os.fsencode(part)) > 255 for part in p.parts):
        raise UserError(f"{flag} {_shown(path)}: a name in it is longer than 255 bytes")
    new = _new_dirs(p)
    existing = new[-1].parent if new else p
    if not os.path.isdir(existing):
        what = "a file" if os.path.isfile(existing) else "not a directory"
        where = f"is {what}" if existing == p else f"lies under {_shown(existing)}, which is {what}"
        raise UserError(f"{flag} {_shown(path)} {where}; give a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{flag} {_shown(path)}: cannot write in {_shown(existing)} "
                        f"({e.strerror or type(e).__name__})") from None
    created += new
    return p


def _readable_dir(path, flag: str) -> Path:
    """``path`` is an existing directory whose entries can be listed."""
    p = Path(path).expanduser()
    if not os.path.exists(p):          # os.path: False, not an error, for a name too long
        raise UserError(f"{flag} {_shown(path)} does not exist")
    if not os.path.isdir(p):
        raise UserError(f"{flag} {_shown(path)} is not a directory")
    try:
        os.listdir(p)
    except OSError as e:
        raise UserError(f"{flag} {_shown(path)}: cannot read it ({e.strerror or type(e).__name__})") from None
    return p


def _data_dir(data_dir) -> None:
    """``--data-dir`` (or ``$GLUE_DIR``), when given, is a readable directory."""
    if data_dir:
        _readable_dir(data_dir, "--data-dir")
    elif os.environ.get("GLUE_DIR"):
        _readable_dir(os.environ["GLUE_DIR"], "$GLUE_DIR")


def _text_file(path, flag: str, limit: int) -> str:
    """The UTF-8 text of the regular file ``path`` (at most ``limit`` bytes)."""
    p = Path(path).expanduser()
    if not os.path.exists(p):
        raise UserError(f"{flag} {_shown(path)} does not exist")
    if not os.path.isfile(p):
        raise UserError(f"{flag} {_shown(path)} is not a regular file")
    try:
        with open(p, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"{flag} {_shown(path)}: cannot read it ({e.strerror or type(e).__name__})") from None
    if len(raw) > limit:
        raise UserError(f"{flag} {_shown(path)} is larger than {limit >> 20} MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{flag} {_shown(path)} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                        f"{e.start})") from None


# ---------------------------------------------------------------------------------------------- commands
def _parser() -> argparse.ArgumentParser:
    """The commands and their options."""
    ap = _Parser(prog="python -m harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    data = _Parser(add_help=False)
    data.add_argument("--data-dir", help="classic GLUE directory (<dir>/MRPC/train.tsv ...); default $GLUE_DIR, "
                                         "else the Hugging Face hub" + FROM_ROOT)
    data.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    large = _Parser(add_help=False)
    large.add_argument("--allow-large", action="store_true",
                       help="accept a spec that expands to more than 5,000 configs (harness.validate.MAX_CONFIGS)")

    r = sub.add_parser("run", parents=[data], help="train one config directly (no notebook)")
    r.add_argument("--task", default="mrpc")
    r.add_argument("--method", default="random")
    r.add_argument("--preset", default="quick")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    r.add_argument("--out-dir", default="logs/adhoc", help="where the log goes (default: %(default)s)" + FROM_ROOT)

    g = sub.add_parser("grid", parents=[data, large], help="run a grid spec through papermill (resumable)")
    g.add_argument("spec", help="e.g. configs/quick.yaml" + FROM_ROOT)
    g.add_argument("--retry-failed", action="store_true", help="run again the configs whose log says failed")
    g.add_argument("--kernel", default="python3", help="the Jupyter kernel of the notebook executor")
    g.add_argument("--out-dir", help="where logs go (default: the spec's out_dir)" + FROM_ROOT)
    g.add_argument("--workers", type=int, help="runs at once, each in its own process (default: the spec's, else 1)")
    g.add_argument("--executor",
                   help="notebook: papermill executes notebooks/train.ipynb per run (the record of each run); "
                        "process: call the training function directly (no kernel start-up; with N GPUs, worker i "
                        "gets GPU i mod N); ray: each run a Ray task on the cluster at $RAY_ADDRESS, else on a "
                        "local instance of workers x threads CPUs. Default: the spec's, else notebook")
    g.add_argument("--threads", type=int, help="torch threads per worker (default: CPU count / workers)")
    g.add_argument("--gpus-per-run", type=float,
                   help="ray: GPUs each run reserves (0.25 packs four runs on a card; default: the spec's, else 0)")
    g.add_argument("--allow-dirty", action="store_true",
                   help="start even if lora/, harness/, configs/ ... differ from the commit (logs say git_dirty)")

    s = sub.add_parser("status", parents=[large], help="list a grid's runs: done, failed, todo, corrupt")
    s.add_argument("spec", help="e.g. configs/quick.yaml" + FROM_ROOT)
    s.add_argument("--out-dir", help="where logs go (default: the spec's out_dir)" + FROM_ROOT)

    f = sub.add_parser("figures", help="rebuild figures/ and tables from logs/ (no training)")
    f.add_argument("--logs", default="logs", help="a directory of grids, one subdirectory each (default: %(default)s)"
                                                  + FROM_ROOT)
    f.add_argument("--out", default="figures", help="figures go to <out>/<grid>/ (default: %(default)s)" + FROM_ROOT)

    m = sub.add_parser("readme", help="rewrite README.md's result table from a grid's logs")
    m.add_argument("spec", nargs="?", default="configs/quick.yaml", help="default: %(default)s" + FROM_ROOT)
    m.add_argument("--readme", default="README.md", help="default: %(default)s" + FROM_ROOT)

    c = sub.add_parser("check", help="verify every log under a directory (JSON, fields, config hash = file name, "
                                     "status, factor files, no leftover temporaries); exit 1 on any problem")
    c.add_argument("dir", nargs="?", default="logs", help="a grid's log directory or a directory of them "
                                                          "(default: %(default)s)" + FROM_ROOT)

    pl = sub.add_parser("planted", parents=[data], help="planted-update experiment: recover a known ΔW* "
                                                         "with each init (harness/planted.py)")
    pl.add_argument("--out", default="logs/planted", help="default: %(default)s" + FROM_ROOT)
    from .presets import PLANTED
    for key, (default, what) in PLANTED.items():      # one option per setting, from the settings table
        if key == "targets":
            continue
        opt, kind = "--" + key.replace("_", "-"), type(default[0] if isinstance(default, list) else default)
        if key == "layers":
            pl.add_argument(opt, nargs="+", type=int, help=what)
        else:
            pl.add_argument(opt, nargs="+" if isinstance(default, list) else None, type=kind, default=default,
                            help=f"{what} (default: %(default)s)")
    pl.add_argument("--inits", nargs="+", help="default: random svd svd_minor lora_fa lora_fa_svd olora "
                                               "(those lora has)")
    pl.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    pl.add_argument("--subspaces", nargs="+", default=["top", "bottom", "random"])
    pl.add_argument("--shard", default="0/1", metavar="I/N",
                    help="run every N-th config from the I-th (N processes can share one GPU)")

    return ap


def main(argv=None) -> int:
    ap = _parser()
    try:
        args = ap.parse_args(argv)
    except _ArgError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    created: list[Path] = []     # output directories this command makes; removed again if it is refused
    try:
        with at_repo_root():     # relative paths in args and $GLUE_DIR are from the repository root
            return _dispatch(args, created)
    except UserError as e:       # a bad input (or $STUDY_ROOT names no directory): nothing was done
        _remove_empty(created)
        lines = getattr(e, "problems", None) or [str(e)]     # CorruptLogs: one line per file
        for line in lines[:MAX_ERROR_LINES]:
            print(f"error: {_one_line(line)}", file=sys.stderr)
        if len(lines) > MAX_ERROR_LINES:
            print(f"error: ... and {len(lines) - MAX_ERROR_LINES} more (python -m harness check lists them all)",
                  file=sys.stderr)
        return 2
    except KeyboardInterrupt:    # Ctrl-C outside a grid (a grid turns it into Interrupted)
        _remove_empty(created)
        print("interrupted (SIGINT)", file=sys.stderr)
        return 130
    except BaseException as e:
        grid = sys.modules.get(f"{__package__}.grid")      # Interrupted comes from there, if at all
        if grid is None or not isinstance(e, grid.Interrupted):
            raise
        print(f"interrupted ({e}): {e.message}" if e.message else f"interrupted ({e})", file=sys.stderr)
        return 128 + e.signum


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the directories of ``dirs`` (deepest first) that are empty."""
    for d in dirs:
        if os.path.isdir(d) and not any(d.iterdir()):
            d.rmdir()


def _dispatch(args, created: list) -> int:
    if args.cmd == "run":
        return _run(args, created)
    if args.cmd == "grid":
        from .validate import MAX_CONFIGS, load_spec
        spec = load_spec(args.spec, None if args.allow_large else MAX_CONFIGS)   # before torch loads: a quick refusal
        _data_dir(args.data_dir)
        from .grid import grid_out_dir, run_grid
        _writable_dir(grid_out_dir(spec, args.out_dir), "--out-dir" if args.out_dir else f"{args.spec}: out_dir",
                      created)
        _check_device(args.device)
        result = run_grid(spec, args.data_dir, args.device, args.retry_failed, args.kernel,
                          out_dir=args.out_dir, workers=args.workers, executor=args.executor, threads=args.threads,
                          gpus_per_run=args.gpus_per_run, allow_dirty=args.allow_dirty)
        failed = [k for k, v in result.items() if v != "done"]
        from .grid import expand
        waiting: list = []
        expand(spec, grid_out_dir(spec, args.out_dir), waiting)
        print(f"{len(result) - len(failed)} done, {len(failed)} failed"
              + (f", {len(waiting)} waiting for their lr sweep: run this grid again after it" if waiting else ""))
        return 1 if failed else 0
    if args.cmd == "status":
        from .validate import MAX_CONFIGS, load_spec
        spec = load_spec(args.spec, None if args.allow_large else MAX_CONFIGS)
        from .config import run_id
        from .grid import expand, grid_out_dir, run_status
        from .logs import CorruptLogs, read_log
        out = grid_out_dir(spec, args.out_dir)
        if out.exists():
            _readable_dir(out, "--out-dir" if args.out_dir else f"{args.spec}: out_dir")
        counts, waiting = {}, []
        for cfg in expand(spec, out, waiting):
            st = run_status(cfg, out)
            counts[st] = counts.get(st, 0) + 1
            why = ""
            if st == "corrupt":
                try:
                    read_log(out / f"{run_id(cfg)}.json")
                except CorruptLogs as e:
                    why = "  " + e.problems[0].split(": ", 1)[-1]
            print(f"{st:7s} {run_id(cfg)}{why}")
        for task, method, seed in waiting:
            print(f"waiting {task} {method} seed {seed}: its lr sweep ({spec['lr_from']}) has runs to do")
        if waiting:
            counts["waiting"] = len(waiting)
        print(", ".join(f"{v} {k}" for k, v in counts.items()))
        return 1 if "corrupt" in counts else 0
    if args.cmd == "readme":
        return _readme(args)
    if args.cmd == "planted":
        return _planted(args, created)
    if args.cmd == "figures":
        logs = _readable_dir(args.logs, "--logs")
        out = _writable_dir(args.out, "--out", created)
        from .plots.build import SCRATCH_GRIDS, build_all
        own_logs = logs.resolve() == (repo_root() / "logs").resolve()
        build_all(logs, out, skip=SCRATCH_GRIDS if own_logs else ())
        return 0
    if args.cmd == "check":
        from .check import check_logs
        problems, n = check_logs(_readable_dir(args.dir, "check"))
        for line in problems:
            print(line)
        print(f"checked {n} files under {args.dir}: " + (f"{len(problems)} problems" if problems else "all good"))
        return 1 if problems else 0
    return 0


def _run(args, created: list) -> int:
    over = {}
    for kv in args.set:
        if "=" not in kv:
            raise UserError(f"--set {_one_line(kv, 80)!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        if k in ("task", "method", "preset", "seed"):
            raise UserError(f"--set {_one_line(kv, 80)}: {k} has its own option; use --{k} {_one_line(v, 60)}")
        over[k] = _value(v)
    from .data import check_local
    _data_dir(args.data_dir)
    out = _writable_dir(args.out_dir, "--out-dir", created)
    check_local([args.task], args.data_dir)     # before torch loads: a missing or malformed file is refused at once
    from .config import make_config
    cfg = make_config(args.task, args.method, args.preset, seed=args.seed, **over)
    _check_device(args.device)
    from .train import run
    try:
        log = run(cfg, out, args.data_dir, device=args.device)
    except (ValueError, RuntimeError) as e:
        _remove_empty(created)
        msg, code = _startup_error(e, cfg)
        print(f"error: {_one_line(msg)}", file=sys.stderr)
        return code
    print(json.dumps({"run_id": log["run_id"], "status": log["status"], "final": log["final"],
                      "wall_time_s": log["wall_time_s"]}))
    return 0 if log["status"] == "ok" else 1


def _readme(args) -> int:
    from .prose.readme import README_BEGIN
    from .validate import load_spec
    text = _text_file(args.readme, "--readme", MAX_README_BYTES)
    if README_BEGIN not in text:
        raise UserError(f"--readme {_shown(args.readme)} has no generated block to replace (the line {README_BEGIN})")
    _writable_dir(Path(args.readme).expanduser().parent, "--readme's directory", [])
    spec = load_spec(args.spec)
    from .grid import expand, grid_out_dir, run_status
    out = grid_out_dir(spec)
    status = [run_status(c, out) for c in expand(spec, out)]
    if "corrupt" in status:
        from .logs import read_logs
        read_logs(out)               # raises CorruptLogs, one line per file
    if "done" not in status:
        raise UserError(f"no run of {args.spec} is logged in {out} yet; run `python -m harness grid {args.spec}` "
                        f"first ({args.readme} is left as it is)")
    from .prose.readme import update_readme
    changed = update_readme(args.readme, args.spec)
    from .prose.protocol import update_readme_block
    root = repo_root()
    if (root / "logs" / "v2").is_dir() and (root / "logs" / "v2_sweep").is_dir():
        changed |= update_readme_block(args.readme, root / "logs" / "v2", root / "logs" / "v2_sweep")
    print(f"{args.readme}: {'updated' if changed else 'unchanged'}")
    return 0


def _planted(args, created: list) -> int:
    import math

    from .validate import MAX_SEED
    try:
        shard = tuple(int(x) for x in args.shard.split("/"))
    except ValueError:
        raise UserError(f"--shard {_one_line(args.shard, 40)!r}: expected I/N, e.g. 0/4") from None
    bad = [s for s in args.seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise UserError(f"invalid seed {bad[0]}; valid: integers from 0 to {MAX_SEED}")
    for name, values in (("lr", args.lrs), ("scale", [args.scale])):
        bad = [x for x in values if not math.isfinite(x)]
        if bad:
            raise UserError(f"invalid {name} {bad[0]}; valid: a finite number")
    _data_dir(args.data_dir)
    _writable_dir(args.out, "--out", created)
    _check_device(args.device)
    from .planted import run_planted
    from .presets import PLANTED
    settings = {k: getattr(args, k) for k in PLANTED if hasattr(args, k)}
    result = run_planted(args.out, args.subspaces, args.inits, args.seeds, args.data_dir, args.device,
                         shard=shard, **settings)
    failed = [k for k, v in result.items() if v == "failed"]
    print(f"{len(result) - len(failed)} done or skipped, {len(failed)} failed")
    return 1 if failed else 0


def _check_device(device: str | None) -> None:
    """``--device``: a torch device string this machine has."""
    if device is None:
        return
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"unknown device {_one_line(device, 60)!r}; valid: cpu, cuda, cuda:N, mps") from None
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if dev.type in available and not available[dev.type]():
        raise UserError(f"device {_one_line(device, 60)!r} is not available on this machine; valid here: cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise UserError(f"device {device!r} does not exist; valid here: {', '.join(f'cuda:{i}' for i in range(n))}")


if __name__ == "__main__":
    sys.exit(main())
