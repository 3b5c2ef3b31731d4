"""A pytest plugin that runs a whole test session under Windows file
semantics: ``pytest -p safecache.testing.pytest_plugin --emulate-windows``.

``--emulate-windows`` enters :func:`safecache.testing.patch_os` for the
session, so the code under test meets the Windows rules in its own calls
(``open``, ``os.replace``, ``tempfile``, ...) as well as in safecache's;
``--emulate-windows=DENIALS`` also sets ``transient_denials`` (the
probability that an antivirus scanner holds a file for a moment).  It sets
``SAFECACHE_EMULATE_WINDOWS`` for the session too, so that every process
the run starts -- pytest-xdist workers, tools run with ``subprocess`` --
turns the emulator on when it imports safecache.

The plugin is not registered automatically (no ``pytest11`` entry point):
it is loaded only where asked for, with ``-p`` or ``pytest_plugins``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest

from . import _environ
from ._patch import patch_os
from ._windows import WindowsOps

_STACK = pytest.StashKey[contextlib.ExitStack]()
_OPS = pytest.StashKey[WindowsOps]()
_OPTION = "--emulate-windows"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("safecache", "safecache.testing")
    group.addoption(
        _OPTION,
        nargs="?",
        const="on",
        default=None,
        metavar="DENIALS",
        dest="emulate_windows",
        help=(
            "run the session, and every process it starts (xdist workers, subprocesses), under Windows file "
            "semantics (safecache.testing.patch_os); DENIALS is the probability of a transient denial, "
            "as from an antivirus scanner (default 0)"
        ),
    )


def _is_probability(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 1.0
    except ValueError:
        return False


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Let ``--emulate-windows`` go without a value before a path: argparse
    would take ``pytest --emulate-windows tests/`` as ``DENIALS=tests/``."""
    i = 0
    while i < len(args) and args[i] != "--":
        if args[i] == _OPTION:
            if i + 1 < len(args) and _is_probability(args[i + 1]):
                args[i : i + 2] = [f"{_OPTION}={args[i + 1]}"]
            else:
                args[i] = f"{_OPTION}=on"
        i += 1


def _options(value: str) -> dict[str, Any]:
    if value == "on":
        return {}
    if not _is_probability(value):
        raise pytest.UsageError(f"{_OPTION}={value}: DENIALS is a probability between 0 and 1, such as 0.05")
    return {"transient_denials": float(value)}


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("emulate_windows")
    if value is None:
        return
    options = _options(str(value))
    stack = contextlib.ExitStack()
    previous = os.environ.get(_environ.VARIABLE)
    os.environ[_environ.VARIABLE] = _environ.value_for(options)
    stack.callback(_restore, previous)
    # An xdist worker has it already: importing this plugin imported
    # safecache, which read the variable the controller set.
    ops = _environ.active()
    if ops is None or ops.options != WindowsOps(**options).options:
        ops = stack.enter_context(patch_os(**options))
    config.stash[_STACK] = stack
    config.stash[_OPS] = ops


def _restore(previous: str | None) -> None:
    if previous is None:
        os.environ.pop(_environ.VARIABLE, None)
    else:
        os.environ[_environ.VARIABLE] = previous


def pytest_report_header(config: pytest.Config) -> str | None:
    ops = config.stash.get(_OPS, None) or _environ.active()
    if ops is None:
        return None
    denials = f", transient denials {ops.transient_denials:g}" if ops.transient_denials else ""
    return f"safecache.testing: Windows file semantics emulated in every process (patch_os{denials})"


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(_STACK, None)
    if stack is not None:
        del config.stash[_STACK]
        stack.close()
