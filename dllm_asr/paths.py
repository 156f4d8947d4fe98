"""Where things are: the package's own files, other installed packages' folders, the cache."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def package_file(*parts: str) -> Path:
    """A file shipped inside dllm_asr, e.g. ``package_file("assets", "example.wav")``."""
    return PACKAGE_DIR.joinpath(*parts)


def installed_package_dir(package: str) -> Path | None:
    """The folder of an installed Python package, found without importing it (some of the
    packages holding weights import heavy libraries on import); None when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Where assembled models are kept: ``$DLLM_ASR_CACHE`` or ``~/.cache/dllm_asr``."""
    return Path(os.environ.get("DLLM_ASR_CACHE", Path.home() / ".cache" / "dllm_asr"))
