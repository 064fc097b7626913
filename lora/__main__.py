"""Command line: ``lora inspect ADAPTER [--base MODEL] [--compare ADAPTER2] [--out DIR] [--json]``
(also ``python -m lora inspect``).  Bad input is one ``lora inspect: error:`` line on stderr, exit 2, and
nothing written."""
from __future__ import annotations

import argparse
import sys

from .spectra import INTRUDER_EPS


class _ArgError(Exception):
    """A command-line syntax error (argparse's), shown as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one ``error:`` line (no usage block), exit 2."""

    def error(self, message):
        raise _ArgError(f"{self.prog}: error: {message} (see {self.prog} -h)")


def _eps(text: str) -> list[float]:
    try:
        eps = [float(e) for e in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not all(0 < e <= 1 for e in eps):
        raise argparse.ArgumentTypeError(f"{text!r}: every ε must lie in (0, 1]")
    return eps


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return n


def parser() -> _Parser:
    ap = _Parser(prog="lora", description="Tools for LoRA adapters.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    p = sub.add_parser(
        "inspect", prog="lora inspect", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="lora inspect ADAPTER [--base MODEL] [--compare ADAPTER2] [--out DIR] [--json] [options]",
        help="what a LoRA adapter's update ΔW = s·BA does, layer by layer",
        description="What a LoRA adapter's update ΔW = s·BA does, layer by layer: its singular values, effective\n"
                    "and stable rank, the energy of its top directions; with --base, how much of it lies in W's\n"
                    "top singular subspaces, its amplification and the intruder dimensions of W + ΔW; with\n"
                    "--compare, the principal angles and subspace similarity φ between two adapters.",
        epilog="ADAPTER: a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors),\n"
               "a run log logs/<grid>/<run>.json or a factor file .safetensors of this project.\n"
               "--out writes report.md, layers.csv, inspect.json and figures (spectra, overlap, intruders,\n"
               "compare .png); without --out or --json the report is printed. Bad input: one line, exit 2.")
    p.add_argument("adapter", metavar="ADAPTER", help="the adapter to inspect")
    p.add_argument("--base", metavar="MODEL", help="the base model: a directory with safetensors (sharded or not), "
                                                   "a .safetensors file, or a hub id in the local Hugging Face cache")
    p.add_argument("--compare", metavar="ADAPTER2", help="a second adapter on the same model, compared layer by layer")
    p.add_argument("--out", metavar="DIR", help="write the report, table and figures here")
    p.add_argument("--json", action="store_true", help="print the JSON summary on stdout (instead of the report)")
    p.add_argument("--w-top", type=_positive, metavar="K", help="W's top-K singular subspaces (default: each "
                                                                  "layer's adapter rank r)")
    p.add_argument("--energy-k", type=_positive, default=1, metavar="K",
                   help="report the energy share of ΔW's top-K directions (default: %(default)s)")
    p.add_argument("--intruder-k", type=_positive, default=10, metavar="K",
                   help="top-K singular vectors of W + ΔW tested for intruders (default: %(default)s)")
    p.add_argument("--eps", type=_eps, default=",".join(f"{e:g}" for e in INTRUDER_EPS), metavar="E1,E2,...",
                   help="intruder thresholds ε (default: %(default)s)")
    p.add_argument("--no-intruders", action="store_true", help="skip the intruder test (it needs W + ΔW's top "
                                                               "singular vectors)")
    p.add_argument("--full-svd-max", type=int, default=1024, metavar="N",
                   help="layers with min(out, in) ≤ N use W's full SVD, larger ones a randomized one "
                        "(default: %(default)s)")
    return ap


def inspect_command(args) -> int:
    from pathlib import Path

    from .inspect import InspectError, inspect_adapter
    from .inspect_report import report_markdown, to_json, write_report

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise InspectError(f"--out {args.out}: exists and is not a directory")
    progress = None
    if args.out and not args.json and sys.stderr.isatty():
        def progress(i, n, name):
            print(f"\r[{i + 1}/{n}] {name}"[:100].ljust(100), end="", file=sys.stderr, flush=True)
    result = inspect_adapter(args.adapter, base=args.base, compare=args.compare, energy_k=args.energy_k,
                             w_top=args.w_top, intruder_k=args.intruder_k, eps=args.eps,
                             intruders=not args.no_intruders, full_svd_max=args.full_svd_max, progress=progress)
    if progress:
        print(file=sys.stderr)
    if args.out:
        written = write_report(result, args.out)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    print(to_json(result) if args.json else report_markdown(result))
    return 0


def main(argv=None) -> int:
    from .inspect import InspectError

    try:
        args = parser().parse_args(argv)
        return inspect_command(args)
    except _ArgError as e:
        print(e, file=sys.stderr)
        return 2
    except InspectError as e:
        print(f"lora inspect: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
