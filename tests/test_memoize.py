"""``Bucket.memoize`` (safecache._memoize, docs/memoize.md): keys from the
function and its arguments, codecs, compute-once across threads and
processes, and a cache that cannot store never stopping the call."""

from __future__ import annotations

import importlib.util
import multiprocessing
import pickle
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import _workers
import safecache
from safecache import _keys, _memoize


@pytest.fixture
def bucket(cache: safecache.Cache) -> safecache.Bucket:
    return cache.bucket("memo")


class Counter:
    """A function's calls, counted."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __len__(self) -> int:
        return len(self.calls)


# -- calls and keys ----------------------------------------------------------------------------
def test_a_warm_call_returns_the_cached_value_without_calling_the_function(bucket: safecache.Bucket) -> None:
    seen = Counter()

    @bucket.memoize
    def lint(path: str, line_length: int = 88) -> dict[str, Any]:
        seen.calls.append((path, line_length))
        return {"path": path, "findings": [line_length]}

    assert lint("a.py") == {"path": "a.py", "findings": [88]}
    assert lint("a.py") == {"path": "a.py", "findings": [88]}
    assert len(seen) == 1


def test_arguments_are_bound_so_equivalent_calls_share_one_key(bucket: safecache.Bucket) -> None:
    seen = Counter()

    @bucket.memoize
    def f(a: int, b: int = 2, *, c: int = 3) -> int:
        seen.calls.append((a, b, c))
        return a + b + c

    assert f(1) == f(a=1) == f(1, 2) == f(1, b=2, c=3) == f(c=3, a=1) == 6
    assert len(seen) == 1
    assert f.cache_key(1) == f.cache_key(a=1, b=2, c=3)


def test_different_arguments_are_different_keys(bucket: safecache.Bucket) -> None:
    @bucket.memoize
    def f(a: Any, b: int = 0) -> list[Any]:
        return [a, b]

    keys = {_keys.key_digest(f.cache_key(*args)) for args in [(1,), (1, 1), ("1",), (True,), (1.0,), ((1,),)]}
    assert len(keys) == 6
    assert f(1) == [1, 0] and f("1") == ["1", 0]


def test_varargs_and_kwargs_are_part_of_the_key(bucket: safecache.Bucket) -> None:
    @bucket.memoize
    def f(*args: int, **kwargs: int) -> list[Any]:
        return [list(args), kwargs]

    assert f(1, 2, x=3) == [[1, 2], {"x": 3}]
    options = {"x": 3}
    assert f.cache_key(1, 2, x=3) == f.cache_key(1, 2, **options)
    assert f.cache_key(1, 2) != f.cache_key(1, 2, x=3) != f.cache_key(1, 2, y=3)


def test_wrong_arguments_raise_the_functions_own_type_error(bucket: safecache.Bucket) -> None:
    @bucket.memoize
    def f(a: int) -> int:
        return a

    with pytest.raises(TypeError, match="argument"):
        f(1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        f(b=1)  # type: ignore[call-arg]


def _plain(a, b, c=3, d=4): ...  # type: ignore[no-untyped-def]
def _positional_only(a, b=2, /, c=3): ...  # type: ignore[no-untyped-def]
def _no_defaults(a, b): ...  # type: ignore[no-untyped-def]
def _star(a, *rest, b=2, **more): ...  # type: ignore[no-untyped-def]
def _keyword_only(a, *, b, c=3): ...  # type: ignore[no-untyped-def]
def _nothing(): ...  # type: ignore[no-untyped-def]


@settings(max_examples=400)
@given(
    fn=st.sampled_from([_plain, _positional_only, _no_defaults, _star, _keyword_only, _nothing]),
    positional=st.integers(0, 5),
    names=st.lists(st.sampled_from(["a", "b", "c", "d", "e", "rest"]), unique=True, max_size=4),
)
@example(fn=_plain, positional=2, names=["a", "c"])  # a value given twice, every parameter filled
@example(fn=_positional_only, positional=0, names=["a", "b"])  # positional-only by keyword
@example(fn=_plain, positional=1, names=["d", "b"])
def test_binding_agrees_with_inspect(fn: Any, positional: int, names: list[str]) -> None:
    """The binder's own paths (positional, keyword) give what
    ``Signature.bind`` + ``apply_defaults`` give, and refuse what it refuses."""
    import inspect

    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    bind = _memoize._binder(sig, params, (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))
    args = tuple(f"p{i}" for i in range(positional))
    kwargs = {name: f"k{name}" for name in names}
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        with pytest.raises(TypeError):
            bind(args, kwargs)
        return
    bound.apply_defaults()
    assert bind(args, kwargs) == tuple(bound.arguments.values())


def test_the_key_names_the_function_its_codec_and_its_source(bucket: safecache.Bucket) -> None:
    @bucket.memoize
    def f(a: int) -> int:
        return a

    ident, arg = f.cache_key(5)  # type: ignore[misc]
    assert arg == 5
    assert ident.startswith("safecache.memoize/1 test_memoize:")
    assert "test_the_key_names_the_function_its_codec_and_its_source.<locals>.f(a)" in ident
    assert "codec=json" in ident and " src:" in ident


def test_cache_key_reads_the_stored_entry(bucket: safecache.Bucket) -> None:
    @bucket.memoize
    def f(a: int) -> list[int]:
        return [a, a]

    f(3)
    assert bucket.get(f.cache_key(3)) == b"[3,3]"
    assert bucket.get(f.cache_key(4)) is None


def test_invalidate_removes_one_call_and_the_next_call_computes_again(bucket: safecache.Bucket) -> None:
    seen = Counter()

    @bucket.memoize
    def f(a: int) -> int:
        seen.calls.append((a,))
        return a

    f(1), f(2)
    assert f.invalidate(1) is True
    assert f.invalidate(1) is False
    f(1), f(2)
    assert [c[0] for c in seen.calls] == [1, 2, 1]


def test_an_argument_that_cannot_be_a_key_raises_type_error_naming_it(bucket: safecache.Bucket) -> None:
    @bucket.memoize
    def f(path: str, options: Any) -> int:
        return 1

    with pytest.raises(TypeError, match=r"argument 'options' cannot be part of a cache key.*set.*key="):
        f("a.py", {"x", "y"})
    with pytest.raises(TypeError, match="'options'"):
        f.cache_key("a.py", object())


def test_an_unsupported_argument_raises_even_when_the_cache_is_disabled(cache_dir: Path) -> None:
    bucket = safecache.Cache(cache_dir, enabled=False).bucket("memo")

    @bucket.memoize
    def f(options: Any) -> int:
        return 1

    with pytest.raises(TypeError, match="'options'"):
        f({1})


def test_a_key_function_says_what_identifies_a_call(bucket: safecache.Bucket) -> None:
    seen = Counter()

    @bucket.memoize(key=lambda path, options: (path, sorted(options)))
    def f(path: str, options: set[str]) -> int:
        seen.calls.append((path,))
        return len(options)

    assert f("a.py", {"x", "y"}) == 2
    assert f("a.py", {"y", "x"}) == 2
    assert len(seen) == 1
    _ident, user_key = f.cache_key("a.py", {"x"})  # type: ignore[misc]
    assert user_key == ("a.py", ["x"])


def test_a_key_function_returning_an_invalid_key_is_a_type_error(bucket: safecache.Bucket) -> None:
    @bucket.memoize(key=lambda x: {x})
    def f(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="key function"):
        f(1)


# -- methods -----------------------------------------------------------------------------------
def test_methods_key_on_the_class_not_the_instance(bucket: safecache.Bucket) -> None:
    seen = Counter()

    class Linter:
        @bucket.memoize
        def lint(self, path: str) -> str:
            seen.calls.append((self, path))
            return path.upper()

    class StrictLinter(Linter):
        pass

    assert Linter().lint("a") == Linter().lint("a") == "A"
    assert len(seen) == 1  # two instances, one computation
    assert StrictLinter().lint("a") == "A"
    assert len(seen) == 2  # a subclass is another key
    one = Linter()
    assert one.lint.cache_key("a") == Linter.lint.cache_key(one, "a")
    assert one.lint.cache_key("a")[1].endswith("Linter")  # type: ignore[index]
    assert one.lint.invalidate("a") is True
    one.lint("a")
    assert len(seen) == 3


def test_a_method_that_depends_on_the_instance_says_so_with_a_key_function(bucket: safecache.Bucket) -> None:
    class Formatter:
        def __init__(self, width: int) -> None:
            self.width = width

        @bucket.memoize(key=lambda self, text: (self.width, text))
        def format(self, text: str) -> str:
            return text.ljust(self.width)

    assert Formatter(3).format("a") == "a  "
    assert Formatter(5).format("a") == "a    "


def test_classmethods_key_on_the_class(bucket: safecache.Bucket) -> None:
    seen = Counter()

    class Config:
        @classmethod
        @bucket.memoize
        def load(cls, name: str) -> str:
            seen.calls.append((cls, name))
            return f"{cls.__name__}:{name}"

    assert Config.load("x") == Config.load("x") == "Config:x"
    assert len(seen) == 1


def test_staticmethods_work_with_memoize_inside(bucket: safecache.Bucket) -> None:
    class Tools:
        @staticmethod
        @bucket.memoize
        def double(x: int) -> int:
            return x * 2

    assert Tools.double(2) == Tools().double(2) == 4
    assert Tools.double.cache_key(2)[1:] == (2,)  # type: ignore[attr-defined]


# -- codecs ------------------------------------------------------------------------------------
def test_json_is_the_default_and_first_and_cached_calls_return_the_same(bucket: safecache.Bucket) -> None:
    @bucket.memoize
    def f() -> Any:
        return {"b": (1, 2), "a": None}

    first, second = f(), f()
    assert first == second == {"a": None, "b": [1, 2]}  # a tuple comes back as a list, every time
    assert bucket.get(f.cache_key()) == b'{"a":null,"b":[1,2]}'  # sorted keys, compact


def test_json_refuses_a_value_it_cannot_encode_and_stores_nothing(bucket: safecache.Bucket) -> None:
    @bucket.memoize
    def f() -> Any:
        return {1, 2}

    with pytest.raises(TypeError, match="json codec cannot encode"):
        f()
    assert bucket.get(f.cache_key()) is None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(_json_values)
def test_the_json_codec_decodes_as_json_loads_does(value: Any) -> None:
    import json
    import math

    codec = _memoize.builtin_codec("json")
    data = codec.dumps(value)
    assert data == json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    got, expected = codec.loads(data), json.loads(data)
    assert repr(got) == repr(expected) or (isinstance(got, float) and math.isnan(got) and math.isnan(expected))


def test_the_json_codec_refuses_what_it_did_not_write() -> None:
    codec = _memoize.builtin_codec("json")
    assert codec.loads(b" [1] ") == [1]  # JSON still, if not ours
    for bad in (b"", b"[1] [2]", b"{", "é".encode()):
        with pytest.raises(ValueError):
            codec.loads(bad)


def test_raw_codec_stores_bytes_as_they_are(bucket: safecache.Bucket) -> None:
    @bucket.memoize(codec="raw")
    def f(n: int) -> bytes:
        return bytes(range(n))

    assert f(3) == f(3) == b"\x00\x01\x02"
    assert bucket.get(f.cache_key(3)) == b"\x00\x01\x02"


def test_raw_codec_refuses_anything_but_bytes(bucket: safecache.Bucket) -> None:
    @bucket.memoize(codec="raw")
    def f() -> Any:
        return "text"

    with pytest.raises(TypeError, match="raw codec"):
        f()


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x


def test_pickle_codec_round_trips_objects_when_asked_for(bucket: safecache.Bucket) -> None:
    @bucket.memoize(codec="pickle")
    def f(x: int) -> Any:
        return {"p": Point(x), "t": (1, 2), "s": {3}}

    assert f(1) == f(1) == {"p": Point(1), "t": (1, 2), "s": {3}}
    assert "codec=pickle5" in f.cache_key(1)[0]  # type: ignore[index]


def test_a_codec_object_with_dumps_and_loads(bucket: safecache.Bucket) -> None:
    class Upper:
        name = "upper"

        @staticmethod
        def dumps(value: str) -> bytes:
            return value.upper().encode()

        @staticmethod
        def loads(data: bytes) -> str:
            return data.decode()

    @bucket.memoize(codec=Upper())
    def f() -> str:
        return "shout"

    assert f() == f() == "SHOUT"
    assert "codec=custom:upper" in f.cache_key()[0]  # type: ignore[index]


def test_unknown_codecs_are_refused_at_decoration(bucket: safecache.Bucket) -> None:
    with pytest.raises(ValueError, match="unknown codec 'yaml'"):
        bucket.memoize(codec="yaml")
    with pytest.raises(TypeError):
        bucket.memoize(codec=42)


def test_changing_the_codec_changes_the_key(bucket: safecache.Bucket) -> None:
    def f() -> bytes:
        return b"x"

    assert bucket.memoize(codec="raw")(f).cache_key() != bucket.memoize(codec="pickle")(f).cache_key()


def test_an_entry_the_codec_cannot_decode_is_computed_again(bucket: safecache.Bucket) -> None:
    seen = Counter()

    @bucket.memoize
    def f() -> int:
        seen.calls.append(())
        return 7

    bucket.put(f.cache_key(), b"not json")
    assert f() == 7
    assert len(seen) == 1
    assert bucket.get(f.cache_key()) == b"7"


# -- source digest -----------------------------------------------------------------------------
def _load(path: Path, name: str, source: str) -> Any:
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source, shared", [(True, False), (False, True)])
def test_editing_the_function_changes_its_key_unless_source_is_off(
    bucket: safecache.Bucket, tmp_path: Path, source: bool, shared: bool
) -> None:
    template = "def compute(x):\n    return x * {factor}\n"
    old = _load(tmp_path / "v1.py", "subject", template.format(factor=2))
    new = _load(tmp_path / "v2.py", "subject", template.format(factor=3))
    memo_old = bucket.memoize(source=source)(old.compute)
    memo_new = bucket.memoize(source=source)(new.compute)
    assert memo_old(5) == 10
    assert (memo_old.cache_key(5) == memo_new.cache_key(5)) is shared
    assert memo_new(5) == (10 if shared else 15)


def test_functions_without_source_are_keyed_by_their_code(bucket: safecache.Bucket) -> None:
    space: dict[str, Any] = {"__name__": "generated"}
    exec("def g(x):\n    return x + 1\n", space)
    memo = bucket.memoize(space["g"])
    assert " code:" in memo.cache_key(1)[0]  # type: ignore[index]
    assert memo(1) == 2


# -- compute once, failures --------------------------------------------------------------------
def test_an_exception_propagates_and_nothing_is_stored(bucket: safecache.Bucket) -> None:
    seen = Counter()

    @bucket.memoize
    def f() -> int:
        seen.calls.append(())
        if len(seen) == 1:
            raise RuntimeError("first call fails")
        return 1

    with pytest.raises(RuntimeError, match="first call fails"):
        f()
    assert f() == 1
    assert len(seen) == 2


def test_threads_calling_at_once_compute_once(bucket: safecache.Bucket) -> None:
    seen = Counter()
    start = threading.Barrier(8)

    @bucket.memoize
    def slow(x: int) -> int:
        seen.calls.append((x,))
        time.sleep(0.3)  # long enough that every thread arrives while it runs
        return x * 2

    results: list[int] = []

    def call() -> None:
        start.wait()
        results.append(slow(21))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [42] * 8
    assert len(seen) == 1


def test_processes_calling_at_once_compute_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: each builds the key from scratch
    root, marker = str(tmp_path / "cache"), str(tmp_path / "runs")
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_workers.memoize_worker, args=(root, marker, start, queue)) for _ in range(6)]
    for p in procs:
        p.start()
    start.set()
    values = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    runs = Path(marker).read_text().split()
    assert len(runs) == 1
    assert values == [{"x": 21, "by": int(runs[0])}] * 6


def test_a_disabled_cache_still_runs_the_function_every_time(cache_dir: Path) -> None:
    seen = Counter()
    bucket = safecache.Cache(cache_dir, enabled=False).bucket("memo")

    @bucket.memoize
    def f(x: int) -> list[int]:
        seen.calls.append((x,))
        return [x]

    assert f(1) == f(1) == [1]
    assert len(seen) == 2
    assert f.invalidate(1) is False
    assert not cache_dir.exists()


def test_a_read_only_cache_serves_hits_and_still_runs_misses(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = Counter()

    def stored(x: int) -> list[int]:
        seen.calls.append((x,))
        return [x]

    safecache.Cache(cache_dir).bucket("memo").memoize(stored)(1)
    monkeypatch.setattr("safecache._location._read_only_fs", lambda path: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", safecache.CacheWarning)
        cache = safecache.Cache(cache_dir)
        assert not cache.writable
        memo = cache.bucket("memo").memoize(stored)
        assert memo(1) == [1]  # a hit: not computed again
        assert memo(2) == memo(2) == [2]  # misses: computed, nothing stored
    assert [c[0] for c in seen.calls] == [1, 2, 2]


def test_strict_read_only_raises_before_the_function_runs(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir.mkdir()
    monkeypatch.setattr("safecache._location._read_only_fs", lambda path: True)
    seen = Counter()
    with pytest.warns(safecache.CacheWarning, match="read-only"):
        bucket = safecache.Cache(cache_dir, strict=True).bucket("memo")

    @bucket.memoize
    def f() -> int:
        seen.calls.append(())
        return 1

    with pytest.raises(safecache.CacheReadOnlyError):
        f()
    assert len(seen) == 0


def test_ttl_is_given_to_the_entries(bucket: safecache.Bucket) -> None:
    @bucket.memoize(ttl=3600)
    def f() -> int:
        return 1

    f()
    (info,) = list(bucket.items())
    assert info.expires is not None and info.expires > time.time() + 3500


def test_an_invalid_ttl_is_refused_at_decoration(bucket: safecache.Bucket) -> None:
    with pytest.raises(ValueError):
        bucket.memoize(ttl=0)
    with pytest.raises(TypeError):
        bucket.memoize(ttl="1h")  # type: ignore[arg-type]


# -- the wrapper -------------------------------------------------------------------------------
def test_the_wrapper_looks_like_the_function_and_pickles_by_name(bucket: safecache.Bucket) -> None:
    assert module_level.__name__ == "module_level"
    assert module_level.__doc__ == "Doubles."
    assert module_level.__wrapped__(2) == 4
    assert pickle.loads(pickle.dumps(module_level)) is module_level


def test_positional_codec_and_plain_call_forms(bucket: safecache.Bucket) -> None:
    @bucket.memoize("pickle")
    def f() -> set[int]:
        return {1}

    assert f() == {1}
    g = _memoize.memoize(bucket, lambda: {2}, codec="pickle")  # what bucket.memoize(fn, codec=...) does
    assert g() == {2}
    with pytest.raises(TypeError, match="twice"):
        _memoize.memoize(bucket, "raw", codec="json")
    with pytest.raises(TypeError, match="memoize decorates a function"):
        bucket.memoize()(42)  # type: ignore[arg-type]


def test_decorating_imports_nothing_heavy_and_import_safecache_imports_no_memoize() -> None:
    code = (
        "import sys, safecache\n"
        "assert 'safecache._memoize' not in sys.modules and 'safecache._aio' not in sys.modules\n"
        "b = safecache.Cache(enabled=False).bucket('m')\n"
        "@b.memoize\n"
        "def f(x):\n"
        "    return x\n"
        "print(sorted(m for m in ('inspect', 'json', 'pickle', 'asyncio') if m in sys.modules))\n"
        "f(1)\n"
        "print('json' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True"


_module_bucket = safecache.Cache(enabled=False).bucket("memo")


@_module_bucket.memoize
def module_level(x: int) -> int:
    """Doubles."""
    return x * 2
