"""The installed version, from package metadata: the one place it is written
is ``pyproject.toml``."""

from __future__ import annotations


def version() -> str:
    """safecache's version, e.g. ``"0.1.0"``; ``"0+unknown"`` when running
    from a source tree that was never installed.  Reads package metadata
    (about a millisecond): call it when needed, not at import."""
    from importlib.metadata import PackageNotFoundError, version as _metadata_version

    try:
        return _metadata_version("safecache")
    except PackageNotFoundError:
        return "0+unknown"
