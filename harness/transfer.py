"""Moving a model to a machine without network in pieces small enough for the trip, and back in one piece.

The device tool carries at most 64 MiB of working tree per call, and a warm machine keeps ignored folders
between calls, so a file larger than that (all-mpnet-base-v2 in fp16 is ≈ 219 MB) travels as pieces over
consecutive calls:

    python -m harness.transfer fp16 MODEL_DIR OUT_DIR          # the model with floating tensors in fp16
    python -m harness.transfer split FILE PIECES_DIR --mb 55   # FILE.000, FILE.001, ... + FILE.pieces.json
    python -m harness.transfer join PIECES_DIR/FILE.pieces.json DEST   # on the other side: checked, then joined

``FILE.pieces.json`` records every piece's size and sha256 and the whole file's; ``join`` checks each piece
before it writes anything and the joined file before it renames it into place, so a missing, short or corrupt
piece gives one line naming it and leaves no half-written ``DEST``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .tasks import UserError

CHUNK = 1 << 22


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def split(path, out_dir, piece_mb: float = 55.0) -> Path:
    """Cut ``path`` into pieces of at most ``piece_mb`` MB (10⁶ bytes) in ``out_dir``; returns the manifest."""
    path, out_dir = Path(path), Path(out_dir)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    size = int(piece_mb * 1_000_000)
    if size <= 0:
        raise UserError(f"piece size must be positive, got {piece_mb!r} MB")
    out_dir.mkdir(parents=True, exist_ok=True)
    pieces, whole = [], hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(size):
            whole.update(block)
            name = f"{path.name}.{len(pieces):03d}"
            (out_dir / name).write_bytes(block)
            pieces.append({"name": name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    manifest = out_dir / f"{path.name}.pieces.json"
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps({"file": path.name, "bytes": path.stat().st_size, "sha256": whole.hexdigest(),
                               "pieces": pieces}, indent=1))
    os.replace(tmp, manifest)
    return manifest


def join(manifest, dest) -> Path:
    """Check every piece named by ``manifest`` (present, size, sha256), join them into ``dest`` and check the
    whole file's sha256; ``dest`` appears only when everything matched."""
    manifest, dest = Path(manifest), Path(dest)
    try:
        m = json.loads(manifest.read_text())
        pieces = m["pieces"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{manifest}: not a pieces manifest ({type(e).__name__})") from None
    for p in pieces:
        f = manifest.parent / p["name"]
        if not f.is_file():
            raise UserError(f"piece {p['name']} is missing from {manifest.parent}")
        if f.stat().st_size != p["bytes"] or _sha256(f) != p["sha256"]:
            raise UserError(f"piece {p['name']}: size or sha256 differs from the manifest; copy it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", delete=False) as out:
        try:
            for p in pieces:
                with open(manifest.parent / p["name"], "rb") as f:
                    shutil.copyfileobj(f, out, CHUNK)
            out.close()
            if _sha256(Path(out.name)) != m["sha256"]:
                raise UserError(f"joined {m['file']}: sha256 differs from the manifest's (pieces out of order?)")
            os.replace(out.name, dest)
        finally:
            if os.path.exists(out.name):
                os.unlink(out.name)
    return dest


def fp16_copy(model_dir, out_dir) -> Path:
    """The model folder with every floating tensor of ``model.safetensors`` in fp16 (integer tensors, e.g.
    position ids, unchanged) and the tokenizer/config files beside it.  The harness loads it as fp32, so a run
    from it differs from the fp32 checkpoint only by the weights' rounding to fp16."""
    import torch
    from safetensors.torch import load_file, save_file
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "model.safetensors").is_file():
        raise UserError(f"{model_dir}: no model.safetensors")
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(model_dir / "model.safetensors").items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    for f in model_dir.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt") and f.name != "model.safetensors":
            shutil.copy2(f, out_dir / f.name)
    return out_dir


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m harness.transfer", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("split"); a.add_argument("file"); a.add_argument("out_dir"); a.add_argument("--mb", type=float, default=55.0)
    b = sub.add_parser("join"); b.add_argument("manifest"); b.add_argument("dest")
    c = sub.add_parser("fp16"); c.add_argument("model_dir"); c.add_argument("out_dir")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "split":
            print(split(args.file, args.out_dir, args.mb))
        elif args.cmd == "join":
            print(join(args.manifest, args.dest))
        else:
            print(fp16_copy(args.model_dir, args.out_dir))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
