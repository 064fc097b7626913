"""Command line: ``python -m harness {run,grid,status,figures,readme,planted}``.  ``-h`` on each for its options.

Relative paths (grid specs, --out-dir, --out, --logs, --readme, --data-dir and $GLUE_DIR) are taken from
the repository root, not the current directory: every command runs there ($STUDY_ROOT, if set, names
another copy of the tree to use as the root; harness/paths.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .paths import at_repo_root, repo_root
from .tasks import UserError

FROM_ROOT = " (relative paths: from the repository root, not the current directory)"


def _value(text: str):
    """``--set key=value``: the value as JSON if it parses (numbers, lists), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class _ArgError(Exception):
    """A command-line syntax error (argparse's), shown as one line like a UserError."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one ``error:`` line (no usage block), exit 2."""

    def error(self, message):
        raise _ArgError(f"{self.prog}: {message} (see {self.prog} -h)")


def _one_line(msg) -> str:
    """A message on one line, whatever the user's input put in it (a newline in a --set key)."""
    return " ".join(str(msg).splitlines())


def _startup_error(e: Exception, cfg: dict) -> tuple[str, int]:
    """One line for an exception that ended a run before it wrote a log, and the exit code:
    2 for a lora ValueError (a rank too large for a layer, targets that match nothing: the
    user's config), 1 otherwise.  ``HARNESS_DEBUG=1`` re-raises to show the traceback."""
    import os
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


def _new_dirs(path: Path) -> list[Path]:
    """The directories ``path.mkdir(parents=True)`` would create, deepest first."""
    new = []
    for p in [path, *path.parents]:
        if p.exists():
            break
        new.append(p)
    return new


def main(argv=None) -> int:
    ap = _Parser(prog="python -m harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    data = _Parser(add_help=False)
    data.add_argument("--data-dir", help="classic GLUE directory (<dir>/MRPC/train.tsv ...); default $GLUE_DIR, "
                                         "else the Hugging Face hub" + FROM_ROOT)
    data.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")

    r = sub.add_parser("run", parents=[data], help="train one config directly (no notebook)")
    r.add_argument("--task", default="mrpc")
    r.add_argument("--method", default="random")
    r.add_argument("--preset", default="quick")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    r.add_argument("--out-dir", default="logs/adhoc", help="where the log goes (default: %(default)s)" + FROM_ROOT)

    g = sub.add_parser("grid", parents=[data], help="run a grid spec through papermill (resumable)")
    g.add_argument("spec", help="e.g. configs/quick.yaml" + FROM_ROOT)
    g.add_argument("--retry-failed", action="store_true", help="run again the configs whose log says failed")
    g.add_argument("--kernel", default="python3")
    g.add_argument("--out-dir", help="where logs go (default: the spec's out_dir)" + FROM_ROOT)
    g.add_argument("--workers", type=int, help="runs at once, each in its own process (default: the spec's, else 1)")
    g.add_argument("--executor",
                   help="notebook: papermill executes notebooks/train.ipynb per run (the record of each run); "
                        "process: call the training function directly (no kernel start-up). Default: the spec's, else notebook")
    g.add_argument("--threads", type=int, help="torch threads per worker (default: CPU count / workers)")

    s = sub.add_parser("status", help="list a grid's runs: done, failed, todo")
    s.add_argument("spec", help="e.g. configs/quick.yaml" + FROM_ROOT)
    s.add_argument("--out-dir", help="where logs go (default: the spec's out_dir)" + FROM_ROOT)

    f = sub.add_parser("figures", help="rebuild figures/ and tables from logs/ (no training)")
    f.add_argument("--logs", default="logs", help="a directory of grids, one subdirectory each (default: %(default)s)"
                                                  + FROM_ROOT)
    f.add_argument("--out", default="figures", help="figures go to <out>/<grid>/ (default: %(default)s)" + FROM_ROOT)

    m = sub.add_parser("readme", help="rewrite README.md's result table from a grid's logs")
    m.add_argument("spec", nargs="?", default="configs/quick.yaml", help="default: %(default)s" + FROM_ROOT)
    m.add_argument("--readme", default="README.md", help="default: %(default)s" + FROM_ROOT)

    pl = sub.add_parser("planted", parents=[data], help="planted-update experiment: recover a known ΔW* "
                                                         "with each init (harness/planted.py)")
    pl.add_argument("--out", default="logs/planted", help="default: %(default)s" + FROM_ROOT)
    pl.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    pl.add_argument("--subspaces", nargs="+", default=["top", "bottom", "random"])
    pl.add_argument("--inits", nargs="+", help="default: random svd svd_minor lora_fa lora_fa_svd olora "
                                               "(those lora has)")
    pl.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    pl.add_argument("--steps", type=int, default=1000)
    pl.add_argument("--lrs", nargs="+", type=float, default=[3e-4, 1e-3, 3e-3],
                    help="each init's lr is the one with the lowest held-out MSE")
    pl.add_argument("--rank", type=int, default=8)
    pl.add_argument("--k", type=int, default=4, help="rank of the planted ΔW*")
    pl.add_argument("--scale", type=float, default=0.5, help="c in σ = c·‖W‖₂·linspace(1, 0.4, k)")
    pl.add_argument("--eval-every", type=int, default=50)
    pl.add_argument("--batch-size", type=int, default=32)
    pl.add_argument("--max-length", type=int, default=64, help="tokens per sentence (batches trimmed to their longest)")
    pl.add_argument("--layers", nargs="+", type=int, help="encoder layers that get ΔW* and the adapters (default: all); "
                                                          "the layers below the first are run once per batch, not per step")
    pl.add_argument("--n-heldout", type=int, default=512)
    pl.add_argument("--shard", default="0/1", metavar="I/N",
                    help="run every N-th config from the I-th (N processes can share one GPU)")

    try:
        args = ap.parse_args(argv)
    except _ArgError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    try:
        with at_repo_root():        # relative paths in args and $GLUE_DIR are from the repository root
            return _dispatch(args)
    except UserError as e:          # $STUDY_ROOT names no directory
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    try:
        if args.cmd == "run":
            from .config import make_config
            from .train import run
            over = {}
            for kv in args.set:
                if "=" not in kv:
                    raise UserError(f"--set {kv!r}: expected KEY=VALUE")
                k, v = kv.split("=", 1)
                if k in ("task", "method", "preset", "seed"):
                    raise UserError(f"--set {kv}: {k} has its own option; use --{k} {v}")
                over[k] = _value(v)
            cfg = make_config(args.task, args.method, args.preset, seed=args.seed, **over)
            _check_device(args.device)
            out = Path(args.out_dir)
            if out.exists() and not out.is_dir():
                raise UserError(f"--out-dir {str(out)!r} is a file; give a directory")
            created = _new_dirs(out)        # run() makes them; removed again if it ends without a log
            try:
                log = run(cfg, args.out_dir, args.data_dir, device=args.device)
            except BaseException as e:
                for d in created:
                    if d.is_dir() and not any(d.iterdir()):
                        d.rmdir()
                if isinstance(e, (ValueError, RuntimeError)):
                    msg, code = _startup_error(e, cfg)
                    print(f"error: {_one_line(msg)}", file=sys.stderr)
                    return code
                raise
            print(json.dumps({"run_id": log["run_id"], "status": log["status"], "final": log["final"],
                              "wall_time_s": log["wall_time_s"]}))
            return 0 if log["status"] == "ok" else 1
        if args.cmd == "grid":
            from .grid import load_spec, run_grid
            _check_device(args.device)
            result = run_grid(load_spec(args.spec), args.data_dir, args.device, args.retry_failed, args.kernel,
                              out_dir=args.out_dir, workers=args.workers, executor=args.executor, threads=args.threads)
            failed = [k for k, v in result.items() if v != "done"]
            print(f"{len(result) - len(failed)} done, {len(failed)} failed")
            return 1 if failed else 0
        if args.cmd == "status":
            from .config import run_id
            from .grid import expand, grid_out_dir, load_spec, run_status
            spec = load_spec(args.spec)
            out = grid_out_dir(spec, args.out_dir)
            counts = {}
            for cfg in expand(spec, out):
                st = run_status(cfg, out)
                counts[st] = counts.get(st, 0) + 1
                print(f"{st:7s} {run_id(cfg)}")
            print(", ".join(f"{v} {k}" for k, v in counts.items()))
            return 0
        if args.cmd == "readme":
            from .prose.readme import update_readme
            changed = update_readme(args.readme, args.spec)
            from .prose.protocol import update_readme_block
            root = repo_root()
            if (root / "logs" / "v2").is_dir() and (root / "logs" / "v2_sweep").is_dir():
                changed |= update_readme_block(args.readme, root / "logs" / "v2", root / "logs" / "v2_sweep")
            print(f"{args.readme}: {'updated' if changed else 'unchanged'}")
            return 0
        if args.cmd == "planted":
            from .planted import run_planted
            _check_device(args.device)
            try:
                shard = tuple(int(x) for x in args.shard.split("/"))
            except ValueError:
                raise UserError(f"--shard {args.shard!r}: expected I/N, e.g. 0/4") from None
            result = run_planted(args.out, args.subspaces, args.inits, args.seeds, args.data_dir, args.device,
                                 model=args.model, steps=args.steps, lrs=args.lrs, rank=args.rank, k=args.k,
                                 scale=args.scale, eval_every=args.eval_every, batch_size=args.batch_size,
                                 max_length=args.max_length, layers=args.layers,
                                 n_heldout=args.n_heldout, shard=shard)
            failed = [k for k, v in result.items() if v == "failed"]
            print(f"{len(result) - len(failed)} done or skipped, {len(failed)} failed")
            return 1 if failed else 0
        if args.cmd == "figures":
            from .plots.build import SCRATCH_GRIDS, build_all
            own_logs = Path(args.logs).resolve() == (repo_root() / "logs").resolve()
            build_all(args.logs, args.out, skip=SCRATCH_GRIDS if own_logs else ())
            return 0
    except UserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


def _check_device(device: str | None) -> None:
    """``--device``: a torch device string this machine has."""
    if device is None:
        return
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N, mps") from None
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if dev.type in available and not available[dev.type]():
        raise UserError(f"device {device!r} is not available on this machine; valid here: cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise UserError(f"device {device!r} does not exist; valid here: {', '.join(f'cuda:{i}' for i in range(n))}")


if __name__ == "__main__":
    sys.exit(main())
