"""Shared pytest fixtures."""
from __future__ import annotations

import os

# Tests train tiny models: one thread each is as fast, and two processes with two OpenMP threads
# each on a 2-core machine (a notebook kernel beside pytest, or a background grid) slow down ~10x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Tests run grids from a working tree being edited; the refusal itself is tested with this unset.
os.environ.setdefault("HARNESS_ALLOW_DIRTY", "1")

# ============================================================================ harness fixtures
# (tests/test_harness_data.py, tests/test_harness_run.py, tests/test_cli.py)
# Offline Hugging Face environment, the synthetic GLUE fixture in both forms, the real data dir.
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_GLUE_DIR = (REPO_ROOT / ".." / "shared" / "glue").resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def real_glue_dir() -> Path:
    """The official GLUE files beside the project (read only); the test is skipped where absent."""
    if not (REAL_GLUE_DIR / "MRPC" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {REAL_GLUE_DIR}")
    return REAL_GLUE_DIR


def _offline_vars(base: Path) -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(base / "hf_home"), "HF_DATASETS_CACHE": str(base / "hf_datasets"),
            "GIT_OPTIONAL_LOCKS": "0",          # the run log's `git status` must not touch the index
            "TQDM_DISABLE": "1"}


@pytest.fixture
def hf_offline(tmp_path, monkeypatch) -> dict[str, str]:
    """No network, no user cache, no GLUE_DIR: HF caches in tmp dirs.  Returns the variables set.

    ``datasets`` and ``huggingface_hub`` read these variables when first imported, so the module
    constants are patched as well (another test may have imported them already)."""
    base = tmp_path / "hf"
    env = _offline_vars(base)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    import datasets.config
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HOME", env["HF_HOME"], raising=False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(base / "hf_home" / "hub"), raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(env["HF_DATASETS_CACHE"]))
    return env


@pytest.fixture
def subprocess_env(hf_offline) -> dict[str, str]:
    """Environment for ``python -m harness ...`` subprocesses: offline, repo importable, no GLUE_DIR."""
    env = {k: v for k, v in os.environ.items() if k != "GLUE_DIR"}
    env.update(hf_offline)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="session")
def glue_fixture(tmp_path_factory) -> Path:
    """The synthetic fixture in the classic GLUE layout (MRPC, RTE, CoLA; real files' quirks)."""
    from harness.fixtures import write_fixture
    return write_fixture(tmp_path_factory.mktemp("glue_fixture"))


@pytest.fixture(scope="session")
def hub_fixture(tmp_path_factory) -> Path:
    """The same examples as a local copy of the ``nyu-mll/glue`` hub repository."""
    from harness.fixtures import write_hub_fixture
    return write_hub_fixture(tmp_path_factory.mktemp("hub_fixture"))

# ============================================================================ end harness fixtures


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one torch thread avoids OpenMP oversubscription on a shared machine; restored afterwards.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
