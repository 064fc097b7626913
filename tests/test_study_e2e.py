"""End to end on the smoke preset: a grid through papermill, figures from its logs, and the
Jupyter Book built from them with warnings as errors (the same path `make study` takes)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["intro", "method", "round1", "spectra", "speed", "rules", "glossary", "reproduce",
         "limitations"]


def _run(args, env, timeout):
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from harness.fixtures import write_fixture

    tmp = tmp_path_factory.mktemp("study")
    data = write_fixture(tmp / "glue")
    logs, figures = tmp / "logs", tmp / "figures"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "STUDY_LOGS": str(logs),
           "STUDY_FIGURES": str(figures), "STUDY_GRID": "smoke", "PYTHONPATH": str(ROOT)}
    _run([sys.executable, "-m", "harness", "grid", "configs/smoke.yaml", "--data-dir", str(data),
          "--out-dir", str(logs / "smoke")], env, 900)
    _run([sys.executable, "-m", "harness", "figures", "--logs", str(logs), "--out", str(figures)], env, 600)
    book = tmp / "book"
    shutil.copytree(ROOT / "book", book, ignore=shutil.ignore_patterns("_build"))
    if not (book / "_static" / "mathjax" / "tex-chtml.js").exists():
        pytest.skip("MathJax not fetched (make test fetches it); cannot build the book offline")
    jb = Path(sys.executable).parent / "jupyter-book"
    build = _run([str(jb), "build", str(book), "-W", "-n", "--keep-going"], env, 900)
    return dict(logs=logs / "smoke", figures=figures / "smoke", html=book / "_build" / "html", build=build)


def test_grid_logged_every_run(study):
    from harness.config import config_hash
    from harness.grid import expand, load_spec
    from harness.logs import read_log

    configs = expand(load_spec(ROOT / "configs" / "smoke.yaml"))
    logs = [read_log(p) for p in study["logs"].glob("*.json")]
    assert all(lg is not None for lg in logs)
    assert sorted(lg["config_hash"] for lg in logs) == sorted(config_hash(c) for c in configs)
    assert all(lg["status"] == "ok" for lg in logs)
    for lg in logs:   # executed notebook and factors kept beside each log
        assert (study["logs"] / f"{lg['run_id']}.ipynb").is_file()
        assert (study["logs"] / lg["factors_file"]).is_file()


def test_figures_manifest_points_at_pngs(study):
    manifest = json.loads((study["figures"] / "manifest.json").read_text())
    assert any(k.startswith("convergence_") for k in manifest)
    assert any(k.startswith("spectra_") for k in manifest)
    for name, entry in manifest.items():
        path = Path(entry["path"])
        path = path if path.is_absolute() else study["figures"] / path.name
        assert path.is_file(), name
        if path.suffix == ".png":     # a real image, not an empty canvas
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, name
        assert entry["caption"] and "smoke" in entry["caption"], name


def test_book_pages_and_images(study):
    html = study["html"]
    for page in PAGES:
        assert (html / f"{page}.html").is_file(), page
    results = (html / "round1.html").read_text()
    assert "<table" in results and "±" in results
    assert len(re.findall(r"<img[^>]+src=", results)) >= 2          # one convergence figure per task
    spectra = (html / "spectra.html").read_text()
    assert len(re.findall(r"<img[^>]+src=", spectra)) >= 3
    found = (html / "round1.html").read_text()       # generated sentences + the paired-difference figure
    assert "paired difference" in found and "only 2 shared seeds: no conclusion yet" in found
    assert len(re.findall(r"<img[^>]+src=", found)) >= 1
    for page in PAGES:    # no page reaches for a CDN: math and theme are local
        text = (html / f"{page}.html").read_text()
        assert "cdn.jsdelivr" not in text and "mathjax@3" not in text, page
        assert "Traceback" not in text, page
        for src in re.findall(r'<img[^>]+src="([^"]+)"', text):
            if not src.startswith("data:"):
                assert (html / src).is_file(), (page, src)
