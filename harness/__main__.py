"""Command line: ``python -m harness {run,grid,status,figures,readme}``.  ``-h`` on each for its options."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .tasks import UserError


def _value(text: str):
    """``--set key=value``: the value as JSON if it parses (numbers, lists), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data-dir", help="classic GLUE directory (<dir>/MRPC/train.tsv ...); default $GLUE_DIR, "
                                         "else the Hugging Face hub")
    data.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")

    r = sub.add_parser("run", parents=[data], help="train one config directly (no notebook)")
    r.add_argument("--task", default="mrpc")
    r.add_argument("--method", default="random")
    r.add_argument("--preset", default="quick")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    r.add_argument("--out-dir", default="logs/adhoc")

    g = sub.add_parser("grid", parents=[data], help="run a grid spec through papermill (resumable)")
    g.add_argument("spec", help="e.g. configs/quick.yaml")
    g.add_argument("--retry-failed", action="store_true", help="run again the configs whose log says failed")
    g.add_argument("--kernel", default="python3")
    g.add_argument("--out-dir", help="where logs go (default: the spec's out_dir)")

    s = sub.add_parser("status", help="list a grid's runs: done, failed, todo")
    s.add_argument("spec")
    s.add_argument("--out-dir", help="where logs go (default: the spec's out_dir)")

    f = sub.add_parser("figures", help="rebuild figures/ and tables from logs/ (no training)")
    f.add_argument("--logs", default="logs")
    f.add_argument("--out", default="figures")

    m = sub.add_parser("readme", help="rewrite README.md's result table from a grid's logs")
    m.add_argument("spec", nargs="?", default="configs/quick.yaml")
    m.add_argument("--readme", default=str(Path(__file__).resolve().parent.parent / "README.md"))

    args = ap.parse_args(argv)
    try:
        if args.cmd == "run":
            from .config import make_config
            from .train import run
            over = {}
            for kv in args.set:
                if "=" not in kv:
                    raise UserError(f"--set {kv!r}: expected KEY=VALUE")
                k, v = kv.split("=", 1)
                over[k] = _value(v)
            cfg = make_config(args.task, args.method, args.preset, seed=args.seed, **over)
            log = run(cfg, args.out_dir, args.data_dir, device=args.device)
            print(json.dumps({"run_id": log["run_id"], "status": log["status"], "final": log["final"],
                              "wall_time_s": log["wall_time_s"]}))
            return 0 if log["status"] == "ok" else 1
        if args.cmd == "grid":
            from .grid import load_spec, run_grid
            result = run_grid(load_spec(args.spec), args.data_dir, args.device, args.retry_failed, args.kernel,
                              out_dir=args.out_dir)
            failed = [k for k, v in result.items() if v != "done"]
            print(f"{len(result) - len(failed)} done, {len(failed)} failed")
            return 1 if failed else 0
        if args.cmd == "status":
            from .config import run_id
            from .grid import expand, grid_out_dir, load_spec, run_status
            spec = load_spec(args.spec)
            out = grid_out_dir(spec, args.out_dir)
            counts = {}
            for cfg in expand(spec):
                st = run_status(cfg, out)
                counts[st] = counts.get(st, 0) + 1
                print(f"{st:7s} {run_id(cfg)}")
            print(", ".join(f"{v} {k}" for k, v in counts.items()))
            return 0
        if args.cmd == "readme":
            from .book import update_readme
            changed = update_readme(args.readme, args.spec)
            print(f"{args.readme}: {'updated' if changed else 'unchanged'}")
            return 0
        if args.cmd == "figures":
            from .report import build_all
            build_all(args.logs, args.out)
            return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
