"""Substitutes safecache's store for joblib's in every interpreter of a run
of joblib's own tests (tests/test_adapter_joblib.py puts this directory
first on PYTHONPATH, so Python imports this file at start-up: the pytest
process, joblib's worker processes, and the fresh interpreters some tests
start).

What it does: registers ``backend="safecache"`` and makes it the default
``backend`` of ``joblib.Memory``, ``MemorizedFunc`` and ``MemorizedResult``
(joblib's default is ``"local"``, its ``FileSystemStoreBackend``).  So every
``Memory(location)`` of the tests is ``Memory(location, backend="safecache")``;
a test that names ``backend="local"`` still gets joblib's own store.
"""

from __future__ import annotations

import inspect


def _substitute() -> None:
    from joblib import memory

    import safecache.adapters.joblib

    safecache.adapters.joblib.register()
    for cls in (memory.Memory, memory.MemorizedFunc, memory.MemorizedResult):
        init = cls.__init__
        with_defaults = [
            p.name
            for p in inspect.signature(init).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty
        ]
        defaults = list(init.__defaults__)
        index = with_defaults.index("backend")
        if defaults[index] != "local":
            raise RuntimeError(f"{cls.__name__}'s default backend is {defaults[index]!r}, not 'local': update the substitution")
        defaults[index] = "safecache"
        init.__defaults__ = tuple(defaults)


_substitute()
