#!/usr/bin/env python
"""Wall time and peak memory of ``lora inspect --base`` on a base of 7B shape (CPU).

Run from the repository root (≈ 4.3 GB of temporary disk, deleted afterwards)::

    flock /tmp/cpu.lock .venv/bin/python benchmarks/inspect_7b.py [--threads 1] [--dtype bf16] [--tmp DIR]

Workload: 128 matrices 4096 × 4096 (a 7B LLaMA's attention projections: 32 layers × q, k, v, o_proj) in
``--dtype`` (bf16 or fp16), written once to 8 safetensors shards with a ``model.safetensors.index.json``, and
a PEFT-style LoRA adapter on all of them (r = 16, lora_alpha = 32, fp32 factors, ``adapter_config.json`` +
``adapter_model.safetensors``).  Each W is a pretrained-like weight: a Gaussian bulk (entries 0.02·N(0, 1),
spectrum edge ≈ 2.6) plus 64 spikes above it, σ_i = 2.56·(1.5 + 30·0.9^i) on random directions; each
ΔW = s·BA with A ~ N(0, 1/4096), B ~ N(0, 0.01²), s = 2, so ‖ΔW‖_F/‖W‖_F ≈ 0.03.

Measured: ``python -m lora inspect ADAPTER --base DIR --out OUT --json`` as a child process with
OMP/MKL threads = ``--threads``: its wall time and peak resident memory (``resource.getrusage(RUSAGE_CHILDREN)``
maxrss, which counts the pages of the shards it maps as well), plus how many layers' intruder tests the
top-m bound decided and how many needed W's full SVD.  Goal: under 2 minutes and under 4 GiB on one thread.
Written atomically to ``logs/benchmark_inspect.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.logs import write_json_atomic  # noqa: E402

DIM, LAYERS, PROJ, SHARDS, RANK, ALPHA = 4096, 32, ("q_proj", "k_proj", "v_proj", "o_proj"), 8, 16, 32
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pretrained_like(g: torch.Generator, n: int = DIM, spikes: int = 64) -> torch.Tensor:
    """Gaussian bulk (edge ≈ 0.02·2√n) plus ``spikes`` rank-one directions σ_i = 2.56·(1.5 + 30·0.9^i)."""
    W = 0.02 * torch.randn(n, n, generator=g)
    U = torch.linalg.qr(torch.randn(n, spikes, generator=g))[0]
    V = torch.linalg.qr(torch.randn(n, spikes, generator=g))[0]
    s = 2.56 * (1.5 + 30 * 0.9 ** torch.arange(spikes, dtype=torch.float32))
    return W.addmm_(U * s, V.T)


def write_model(root: Path, dtype: torch.dtype, seed: int = 0) -> dict:
    """The sharded base under ``root/base`` and the adapter under ``root/adapter``; returns sizes."""
    g = torch.Generator().manual_seed(seed)
    base, adapter = root / "base", root / "adapter"
    base.mkdir()
    adapter.mkdir()
    names = [f"model.layers.{i}.self_attn.{p}" for i in range(LAYERS) for p in PROJ]
    per = len(names) // SHARDS
    weight_map, factors = {}, {}
    for k in range(SHARDS):
        shard = f"model-{k + 1:05d}-of-{SHARDS:05d}.safetensors"
        tensors = {f"{n}.weight": pretrained_like(g).to(dtype) for n in names[k * per:(k + 1) * per]}
        save_file(tensors, str(base / shard), metadata={"format": "pt"})
        weight_map.update({key: shard for key in tensors})
        del tensors
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for n in names:
        factors[f"base_model.model.{n}.lora_A.weight"] = torch.randn(RANK, DIM, generator=g) / DIM ** 0.5
        factors[f"base_model.model.{n}.lora_B.weight"] = 0.01 * torch.randn(DIM, RANK, generator=g)
    save_file(factors, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": list(PROJ), "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
        "base_model_name_or_path": "synthetic-7b-shape"}))
    size = sum(p.stat().st_size for p in base.iterdir())
    return dict(matrices=len(names), base_bytes=size, shards=SHARDS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--tmp", help="where the 4.3 GB base goes (default: the system's temporary directory)")
    ap.add_argument("--out", default=str(ROOT / "logs" / "benchmark_inspect.json"))
    args = ap.parse_args()
    tmp_parent = Path(args.tmp or tempfile.gettempdir())
    need = LAYERS * len(PROJ) * DIM * DIM * 2
    free = shutil.disk_usage(tmp_parent).free
    if free < need * 1.2:
        print(f"benchmarks/inspect_7b.py: {tmp_parent} has {free / 2**30:.1f} GiB free, needs {need * 1.2 / 2**30:.1f} "
              f"GiB; pass --tmp DIR", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="inspect7b-", dir=tmp_parent))
    try:
        t0 = time.perf_counter()
        sizes = write_model(root, DTYPES[args.dtype])
        t_write = time.perf_counter() - t0
        print(f"wrote {sizes['base_bytes'] / 1e9:.2f} GB base in {t_write:.0f} s", file=sys.stderr)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        cmd = [sys.executable, "-m", "lora", "inspect", str(root / "adapter"), "--base", str(root / "base"),
               "--out", str(root / "report"), "--json"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024      # Linux: KiB
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        result = json.loads(proc.stdout)
        methods = {}
        for row in result["layers"]:
            m = row["intruders"]["method"]
            methods[m] = methods.get(m, 0) + 1
        summary = result["modules"]["all"]
        out = dict(
            command="lora inspect ADAPTER --base DIR --out OUT --json", threads=args.threads, dtype=args.dtype,
            **sizes, rank=RANK, wall_s=round(wall, 2), peak_rss_bytes=peak, peak_rss_gib=round(peak / 2**30, 3),
            goal=dict(wall_s=120, peak_rss_gib=4.0), met=dict(wall=wall < 120, memory=peak < 4 * 2**30),
            write_base_s=round(t_write, 1), intruder_methods=methods,
            svd=sorted({row["svd"] for row in result["layers"]}),
            result=dict(effective_rank=summary["effective_rank"], rel_fro=summary["rel_fro"],
                        energy_in_w_right=summary["energy_in_w_right"], amplification=summary["amplification"],
                        intruder_layers=summary["intruder_layers"]),
            env=dict(python=platform.python_version(), torch=torch.__version__, cpu=platform.processor() or platform.machine(),
                     cores=os.cpu_count(), loadavg_after=os.getloadavg()))
        write_json_atomic(args.out, out)
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
