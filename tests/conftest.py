import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
ARTIFACTS = ROOT / "test-artifacts"


def data_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test naming what is missing."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"../shared/data not found: {p} is missing")
    return p


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    """A real face photo that ships with scikit-image (no data folder needed)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
