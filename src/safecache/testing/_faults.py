"""Fault injection: :class:`FaultOps`, an :class:`~safecache.testing.OsOps`
that makes chosen operations raise a chosen error, and :func:`inject_errors`,
which installs one on top of whatever is in force.  Works on every platform.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Callable, Collection, Iterator, NamedTuple, Union

from safecache import _osops
from safecache._osops import OsOps  # published as safecache.testing.OsOps

from ._install import _installed
from ._perprocess import _check_probability, _PerProcess
from ._winerror import WinError, make_oserror

#: Every operation of OsOps, by name ("open", "replace", ...).
OPERATIONS: tuple[str, ...] = tuple(
    name for name, value in vars(OsOps).items() if callable(value) and not name.startswith("_")
)
_TWO_PATH_OPS = frozenset({"replace", "rename", "link", "symlink", "clone", "copyfile"})

ErrorSpec = Union[int, WinError, BaseException, type[BaseException]]


class Call(NamedTuple):
    """One operation seen by :class:`FaultOps`: its name, its path (for a
    descriptor operation, the path the descriptor was opened with, if it was
    opened through the same FaultOps), and the second path of a
    rename/replace/link/symlink/clone/copyfile."""

    op: str
    path: str | None
    dst: str | None = None


class FaultOps(OsOps):
    """Operations that delegate to ``inner`` but raise ``error`` from some.

    ``error``: an errno (``errno.ENOSPC``; the matching builtin subclass of
    ``OSError`` is raised, with the path), a :class:`WinError`, an
    exception instance (a copy is raised each time) or class.
    ``ops``: names of :class:`~safecache.testing.OsOps` methods, or ``"*"``
    for all.  ``path_contains``: only operations whose path (or second path)
    contains this string.  ``times``: at most this many errors in this
    process, then none.  ``probability`` and ``seed``: raise only on a random
    share of the matching calls (each process draws from its own stream;
    a forked child also counts ``times`` afresh).
    ``after``: perform the operation, then raise (the operation happened but
    its caller is told it failed; an ``open`` is closed again, as its caller
    never gets the descriptor).  ``close`` always raises after closing: a
    descriptor is released even when ``close`` reports an error.

    ``calls`` records every operation (matching or not) in this process;
    ``fired`` counts the errors raised in this process.
    """

    name = "faults"

    def __init__(
        self,
        inner: OsOps,
        error: ErrorSpec,
        ops: Collection[str] | str = ("replace",),
        *,
        path_contains: str | None = None,
        times: int | None = None,
        probability: float = 1.0,
        seed: int | None = None,
        after: bool = False,
    ) -> None:
        selected = frozenset(OPERATIONS if ops == "*" else ([ops] if isinstance(ops, str) else ops))
        unknown = selected - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; known: {', '.join(OPERATIONS)}")
        if times is not None and times < 0:
            raise ValueError("times must be None or >= 0")
        self.inner = inner
        self.error = error
        self.ops = selected
        self.path_contains = path_contains
        self.times = times
        self.probability = _check_probability("probability", probability)
        self.after = after
        self._process = _PerProcess(seed)
        self._paths: dict[int, str] = {}

    @property
    def calls(self) -> list[Call]:
        """Every operation seen in this process, in order."""
        return self._process.records()

    @property
    def fired(self) -> int:
        """How many errors this process raised."""
        return self._process.stats().get("fired", 0)

    def __repr__(self) -> str:
        return f"FaultOps({self.error!r}, ops={sorted(self.ops)!r}, inner={self.inner!r})"

    def _make_error(self, path: str | None, dst: str | None) -> BaseException:
        error = self.error
        if isinstance(error, (int, WinError)):
            return make_oserror(error, path, dst)
        if isinstance(error, type):
            return error()
        try:
            return copy.copy(error)
        except Exception:  # an exception that cannot be copied: raise it as is
            return error

    def _should_fail(self, call: Call) -> bool:
        if call.op not in self.ops:
            return False
        if self.path_contains is not None and not any(
            p is not None and self.path_contains in p for p in (call.path, call.dst)
        ):
            return False
        return self._process.chance(self.probability) and self._process.take("fired", self.times)

    def _call(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        first = args[0] if args else None
        if isinstance(first, int):
            path = self._paths.get(first)
        elif first is None:
            path = None
        else:
            path = os.fsdecode(first)
        dst = os.fsdecode(args[1]) if op in _TWO_PATH_OPS and len(args) > 1 else None
        call = Call(op, path, dst)
        self._process.records().append(call)
        fail = self._should_fail(call)
        if fail and not (self.after or op == "close"):
            raise self._make_error(path, dst)
        result = getattr(self.inner, op)(*args, **kwargs)
        if fail:
            if op == "open":  # nobody could ever close a descriptor it was not given
                self.inner.close(result)
            raise self._make_error(path, dst)
        if op == "open" and path is not None:
            self._paths[result] = path
        elif op == "close" and isinstance(first, int):
            self._paths.pop(first, None)
        return result


def _delegate(op: str) -> Callable[..., Any]:
    def method(self: FaultOps, *args: Any, **kwargs: Any) -> Any:
        return self._call(op, args, kwargs)

    method.__name__ = method.__qualname__ = op
    method.__doc__ = getattr(OsOps, op).__doc__
    return method


# Generated rather than written out so that an operation added to OsOps is
# wrapped too, instead of silently bypassing the wrapped ops.
for _op in OPERATIONS:
    setattr(FaultOps, _op, _delegate(_op))
del _op


@contextlib.contextmanager
def inject_errors(
    error: ErrorSpec,
    ops: Collection[str] | str = ("replace",),
    *,
    path_contains: str | None = None,
    times: int | None = None,
    probability: float = 1.0,
    seed: int | None = None,
    after: bool = False,
) -> Iterator[FaultOps]:
    """Make ``ops`` raise ``error`` inside the ``with`` block.

    Wraps the operations in force (so it stacks on :func:`windows_semantics`
    and on other ``inject_errors`` blocks) in a :class:`FaultOps` with these
    arguments (documented there), installs it, yields it, and restores the
    previous operations on exit, however the block ends.

    Example::

        with inject_errors(errno.ENOSPC, ops=("write",), times=1) as faults:
            bucket.put(b"k", b"v")
        assert faults.fired == 1
    """
    faults = FaultOps(
        _osops.current,
        error,
        ops,
        path_contains=path_contains,
        times=times,
        probability=probability,
        seed=seed,
        after=after,
    )
    with _installed(faults):
        yield faults
