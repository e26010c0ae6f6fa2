"""Shared fixtures: the repository root, the built sample data and tiny models, smoke runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline by construction: a hub lookup must fail at once, never hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def cache() -> Path:
    """`.cache/` with the sample data and all tiny models (built once, reused when current)."""
    from nbutils import fixtures

    return fixtures.build(ROOT / ".cache", quiet=True)


@pytest.fixture(scope="session")
def detection_smoke_runs(cache, tmp_path_factory):
    """Run the four detection projects of the smoke profile through the real runner."""
    from nbutils import runner

    outputs = tmp_path_factory.mktemp("outputs")
    code = runner.main(["run", "detect_ai_text", "--profile", "smoke", "--root", str(ROOT),
                        "--outputs", str(outputs)])
    return code, outputs / "smoke"
