"""Where the shipped assets and the user's caches live.

The model artefacts (top-level ``engines/``) and the panel's style sheets and icons
(top-level ``ui/``) are installed as the packages ``livedeid.assets.engines`` and
``livedeid.assets.ui`` (``pyproject.toml`` maps the folders), so they are found through
:mod:`importlib.resources` in an editable checkout and a normal ``pip install`` alike.
Caches (TensorRT plans, aligned-face caches) go to the user's cache folder
(:mod:`platformdirs`), never into the source tree or site-packages.
May import: the standard library and platformdirs only.
"""
from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

APP_NAME = "livedeid"


def _package_dir(package: str) -> Path:
    # Both packages are plain folders on disk (never zipped: the wheel is not zip-safe
    # for ONNX Runtime, which needs real file paths), so the Traversable is a Path.
    return Path(str(files(package)))


def engines_dir() -> Path:
    """The folder holding ``deid.json`` and the weights it lists."""
    return _package_dir("livedeid.assets.engines")


def ui_dir() -> Path:
    """The folder holding the panel's ``.qss`` style sheets and ``icons/``."""
    return _package_dir("livedeid.assets.ui")


def cache_dir(*parts: str) -> Path:
    """A folder in the user's cache (``LIVEDEID_CACHE_DIR`` overrides), created on demand."""
    root = os.environ.get("LIVEDEID_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        from platformdirs import user_cache_dir
        base = Path(user_cache_dir(APP_NAME, appauthor=False))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
