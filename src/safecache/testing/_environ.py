"""``SAFECACHE_EMULATE_WINDOWS``: the emulator in every process of a test run.

A process started for a test -- an xdist worker, a tool run with
``subprocess``, a ``multiprocessing`` child started with "spawn" -- starts
with the real operating system.  When this variable is set, ``import
safecache`` calls :func:`enable_from_environment`, which enters
:func:`patch_os` for the rest of the process.  Unset, the check costs
``import safecache`` one dictionary lookup and imports nothing.

Values: ``1`` (or ``on``, ``true``, ``yes``) turns it on with the default
options; a probability written with a decimal point (``0.05``) also sets
``transient_denials``; a JSON object (``json.dumps(ops.options)``) gives
every option.  ``0``, ``off``, ``false``, ``no`` and the empty string leave
it off.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Mapping

from ._emulator import WindowsOptions
from ._patch import patch_os
from ._windows import WindowsOps

VARIABLE = "SAFECACHE_EMULATE_WINDOWS"
_ON = frozenset({"1", "on", "true", "yes"})
_OFF = frozenset({"", "0", "off", "false", "no"})
_KEYS = WindowsOptions.__required_keys__ | WindowsOptions.__optional_keys__

_stack = contextlib.ExitStack()  # the patch_os block the variable opened, never closed
_active: WindowsOps | None = None


def options_from(value: str) -> dict[str, Any] | None:
    """The options a value of the variable asks for, or None for "off".
    Raises ``ValueError`` naming the variable for a value it cannot read."""
    text = value.strip()
    if text.lower() in _OFF:
        return None
    if text.lower() in _ON:
        return {}
    try:
        if text.startswith("{"):
            options = json.loads(text)
            if not isinstance(options, dict) or not set(options) <= _KEYS:
                raise ValueError(f"unknown options {sorted(set(options) - _KEYS)}; known: {sorted(_KEYS)}")
            if "acl_denied" in options:
                options["acl_denied"] = tuple(options["acl_denied"])
        else:
            options = {"transient_denials": float(text)}
        WindowsOps(**options)  # the emulator's own checks (probabilities between 0 and 1, ...)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{VARIABLE}={value!r}: expected 1, a probability such as 0.05, or a JSON object of "
            f"WindowsOps options ({exc})"
        ) from None
    return dict(options)


def value_for(options: Mapping[str, Any]) -> str:
    """The value of the variable that asks for ``options``."""
    if not options:
        return "1"
    return json.dumps({key: list(v) if isinstance(v, tuple) else v for key, v in options.items()}, sort_keys=True)


def enable_from_environment() -> WindowsOps | None:
    """Enter :func:`patch_os` for the rest of the process if the variable
    asks for it (once: later calls return the same emulator).  Returns the
    emulator, or None."""
    global _active
    if _active is None:
        options = options_from(os.environ.get(VARIABLE, ""))
        if options is not None:
            _active = _stack.enter_context(patch_os(**options))
    return _active


def active() -> WindowsOps | None:
    """The emulator the variable turned on in this process, if any."""
    return _active
