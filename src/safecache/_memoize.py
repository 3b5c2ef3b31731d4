"""Memoize: a function's results cached in a bucket (``Bucket.memoize``,
docs/memoize.md).

A call builds a key from the function's identity and its arguments, reads
the bucket, and decodes what it finds; a miss computes the value once among
threads and processes (``Bucket.get_or_create``), encodes and stores it.

The warm call is the point, so its cost is kept next to a bare ``get``
(bench/suite/memoize.py measures the ratio): everything that depends only on
the function (its signature, source digest, codec) is worked out once, on
the first call, and a call to a function with plain positional parameters
binds its arguments without ``inspect``.  ``inspect`` and the codec's module
(``json``, ``pickle``) are imported on that first call, not when a tool
decorates its functions at import time.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Generic, ParamSpec, TypeVar, overload

from . import _keys, _policy, _write

if TYPE_CHECKING:
    from ._bucket import Bucket

P = ParamSpec("P")
R = TypeVar("R")

#: The first part of every memoize key: names this key layout.  A change to
#: how keys are built changes it, so old entries become misses, never hits.
KEY_TAG = "safecache.memoize/1"
#: The built-in codecs; "pickle" only when the caller writes it.
CODECS = ("raw", "json", "pickle")
#: Pickle protocol used: fixed, so processes on different Pythons (3.10+)
#: read each other's entries (the highest protocol may change).
PICKLE_PROTOCOL = 5
#: Parameter names taken as the receiver of a method.
RECEIVERS = ("self", "cls")


class Codec:
    """How values become bytes and back: ``dumps(value) -> bytes`` and
    ``loads(bytes) -> value``; ``name`` is part of every key, so entries of
    one codec are never decoded by another."""

    __slots__ = ("dumps", "loads", "name")

    def __init__(self, name: str, dumps: Callable[[Any], Any], loads: Callable[[bytes], Any]) -> None:
        self.name = name
        self.dumps = dumps
        self.loads = loads


def _raw_dumps(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"the raw codec stores bytes, not {type(value).__name__}")


def _raw_loads(data: bytes) -> bytes:
    return data


def builtin_codec(name: str) -> Codec:
    """The built-in codec ``name`` (``CODECS``), importing its module now."""
    if name == "raw":
        return Codec("raw", _raw_dumps, _raw_loads)
    if name == "json":
        import json

        encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
        decoder = json.JSONDecoder()
        # The scanner itself: what we stored has no surrounding whitespace for
        # JSONDecoder.decode to strip with its regular expressions, which
        # cost as much as the scan of a small value (a warm call's budget).
        scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]  # set by __init__

        def json_dumps(value: object) -> bytes:
            return encode(value).encode("ascii")  # ensure_ascii: the text is ASCII

        def json_loads(data: bytes) -> Any:
            text = data.decode("ascii")
            try:
                value, end = scan(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                return decoder.decode(text)  # not what json_dumps writes: its error, or its value
            return value

        return Codec("json", json_dumps, json_loads)
    if name == "pickle":
        import pickle

        def pickle_dumps(value: object) -> bytes:
            return pickle.dumps(value, protocol=PICKLE_PROTOCOL)

        return Codec(f"pickle{PICKLE_PROTOCOL}", pickle_dumps, pickle.loads)
    raise ValueError(f"unknown codec {name!r}: use one of {', '.join(map(repr, CODECS))} or an object with dumps/loads")


def _is_codec_object(codec: object) -> bool:
    return callable(getattr(codec, "dumps", None)) and callable(getattr(codec, "loads", None))


def _codec_spec(codec: object) -> str | Codec:
    """Check ``codec`` at decoration time; a built-in one stays a name until
    the first call (so that decorating imports nothing)."""
    if isinstance(codec, Codec):
        return codec
    if isinstance(codec, str):
        if codec not in CODECS:
            builtin_codec(codec)  # raises the ValueError
        return codec
    if not _is_codec_object(codec):
        raise TypeError(
            f"codec must be one of {', '.join(map(repr, CODECS))} or an object with dumps() and loads(), "
            f"not {type(codec).__name__}"
        )
    if isinstance(codec, type):
        name = f"{codec.__module__}.{codec.__qualname__}"
    else:
        name = str(getattr(codec, "name", None) or getattr(codec, "__name__", None) or _type_label(codec))
    return Codec(f"custom:{name}", codec.dumps, codec.loads)  # type: ignore[attr-defined]


def _type_label(obj: object) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _receiver_label(name: str, obj: object) -> str:
    """What a method's receiver contributes to the key: its class's module
    and qualified name (``cls`` is the class itself), never the instance."""
    t = obj if name == "cls" and isinstance(obj, type) else type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def code_digest(fn: Callable[..., object]) -> str:
    """The digest of ``fn``'s source text (``src:`` + 16 hex digits), or of
    its code object when the source cannot be read (``code:``: functions
    made by ``exec``, frozen applications); ``none`` when it has neither
    (a builtin).  Any edit of the function's text (its decorators
    included) changes it; an edit of a function it calls does not."""
    import inspect

    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        pass
    else:
        digest = _keys.new_blake2b_128()
        digest.update(text.encode("utf-8", "surrogatepass"))
        return "src:" + str(digest.hexdigest())[:16]
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None:
        return "none"
    import marshal

    digest = _keys.new_blake2b_128()
    digest.update(marshal.dumps(code))
    return "code:" + str(digest.hexdigest())[:16]


class _Plan:
    """What a memoized function's keys are built from, worked out on its
    first call: the identity string, and a function from the call's
    ``(args, kwargs)`` to the key."""

    __slots__ = ("bind", "codec", "ident", "make_key", "names", "receiver")

    def __init__(self, memo: Memoized[Any, Any]) -> None:
        import inspect

        fn = memo.__wrapped__
        codec = memo._codec_spec
        self.codec: Codec = builtin_codec(codec) if isinstance(codec, str) else codec
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.names = [p.name for p in params]
        self.receiver = params[0].name if params and params[0].name in RECEIVERS and params[0].kind in positional else None
        digest = code_digest(fn) if memo._source else "unchecked"
        self.ident = (
            f"{KEY_TAG} {fn.__module__}:{fn.__qualname__}({','.join(self.names)}) "
            f"codec={self.codec.name} {digest}"
        )
        self.bind = _binder(sig, params, positional)
        ident, bind, receiver, key_fn = self.ident, self.bind, self.receiver, memo._key_fn
        if key_fn is not None:

            def make_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
                return (ident, key_fn(*args, **kwargs))

        elif receiver is not None:

            def make_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
                values = bind(args, kwargs)
                return (ident, _receiver_label(receiver, values[0]), *values[1:])

        else:

            def make_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
                return (ident, *bind(args, kwargs))

        self.make_key = make_key


def _binder(sig: Any, params: list[Any], positional: tuple[Any, ...]) -> Callable[[tuple[Any, ...], dict[str, Any]], tuple[Any, ...]]:
    """``(args, kwargs) -> every parameter's value in order``, defaults
    applied, as ``inspect.Signature.bind`` + ``apply_defaults`` give them
    (so ``f(1)`` and ``f(a=1)`` are one key); ``*args`` as a tuple,
    ``**kwargs`` as a dict.  Raises TypeError for arguments the function
    would refuse.  Calls of functions with plain parameters (no ``*``,
    ``**`` or keyword-only ones) are bound here, without ``inspect``; any
    call this does not bind plainly (an error among them) goes to ``inspect``."""
    n = len(params)
    simple = all(p.kind in positional for p in params)
    defaults = tuple(p.default for p in params if p.default is not p.empty)
    first_default = n - len(defaults)  # plain parameters with defaults come last
    missing = object()
    fill = [missing] * first_default + list(defaults)
    by_name = {p.name: i for i, p in enumerate(params) if p.kind is positional[1]}  # not positional-only ones

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        if simple:
            k = len(args)
            if not kwargs:
                if k == n:
                    return args
                if first_default <= k < n:
                    return args + defaults[k - first_default :]
            elif k + len(kwargs) <= n:
                values = [*args, *fill[k:]]
                for name, value in kwargs.items():
                    i = by_name.get(name, -1)
                    if i < k:  # unknown, positional-only, or given twice: inspect says which
                        break
                    values[i] = value
                else:
                    if not any(v is missing for v in values):
                        return tuple(values)
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return tuple(bound.arguments.values())

    return bind


class Memoized(Generic[P, R]):
    """A function whose results are cached in a bucket: made by
    :meth:`Bucket.memoize`; see docs/memoize.md.

    Calling it returns what the codec decodes from the cached entry, or
    computes, stores and returns the value (decoded from the bytes stored,
    so a first call and a cached call return the same thing).  Among threads
    and processes calling it with the same arguments at once, one computes.
    Exceptions from the function propagate and nothing is stored; a value
    the codec cannot encode raises ``TypeError``; an argument that cannot be
    part of a key raises ``TypeError`` naming it.  A cache that is disabled
    or read-only never stops the call: the function runs (in strict mode a
    read-only cache raises ``CacheReadOnlyError``, as ``get_or_create`` does).
    """

    def __init__(
        self,
        bucket: Bucket,
        fn: Callable[P, R],
        *,
        codec: object = "json",
        ttl: float | None = None,
        key: Callable[..., object] | None = None,
        source: bool = True,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"memoize decorates a function, not {type(fn).__name__}")
        if not isinstance(getattr(fn, "__qualname__", None), str) or not isinstance(getattr(fn, "__module__", None), str):
            raise TypeError(f"memoize needs a function with __module__ and __qualname__ (not a {type(fn).__name__})")
        if key is not None and not callable(key):
            raise TypeError(f"key must be a function returning a cache key, not {type(key).__name__}")
        if ttl is not None:
            _write.expires_ns(ttl, 0)  # its TypeError or ValueError, now rather than at the first store
        functools.update_wrapper(self, fn)
        self.__wrapped__: Callable[P, R] = fn
        self._qualname: str = fn.__qualname__
        self._module: str = fn.__module__
        self.bucket = bucket
        self.ttl = ttl
        self._codec_spec = _codec_spec(codec)
        self._key_fn = key
        self._source = bool(source)
        self._plan: _Plan | None = None
        self._get = bucket.get
        # Until the first call has made the plan; then the plan's own functions.
        self._make_key: Callable[[tuple[Any, ...], dict[str, Any]], object] = self._first_key
        self._loads: Callable[[bytes], Any] = self._first_loads

    def _prepare(self) -> _Plan:
        plan = self._plan
        if plan is None:
            plan = self._plan = _Plan(self)  # two threads may both build it: the same plan
            self._loads = plan.codec.loads
            self._make_key = plan.make_key
        return plan

    def _first_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        return self._prepare().make_key(args, kwargs)

    def _first_loads(self, data: bytes) -> Any:
        return self._prepare().codec.loads(data)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = self._make_key(args, kwargs)
        try:
            data = self._get(key)
        except TypeError as exc:
            raise self._explain(args, kwargs, exc) from None
        if data is not None:
            try:
                return self._loads(data)  # type: ignore[no-any-return]
            except Exception as exc:
                return self._undecodable(key, args, kwargs, exc)
        return self._compute(key, args, kwargs)

    def _compute(self, key: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        plan = self._prepare()
        try:
            _keys.encode_key(key)  # even when the cache is off: the same TypeError as with it on
        except (TypeError, ValueError) as exc:
            raise self._explain(args, kwargs, exc) from None
        fn = self.__wrapped__

        def factory() -> bytes:
            return self._encode(plan.codec, fn(*args, **kwargs))

        data = self.bucket.get_or_create(key, factory, ttl=self.ttl)
        return plan.codec.loads(data)  # type: ignore[no-any-return]

    def _encode(self, codec: Codec, value: object) -> bytes:
        try:
            data = codec.dumps(value)
        except Exception as exc:
            raise TypeError(
                f"{self._qualname}() returned a value the {codec.name} codec cannot encode: {exc}"
            ) from exc
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"the {codec.name} codec's dumps() must return bytes, not {type(data).__name__}")
        return bytes(data)

    def _undecodable(self, key: object, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> R:
        """An entry the codec cannot decode (a pickled class since renamed, a
        custom codec's new format): drop it and compute again."""
        _policy.logger().info(
            "safecache: memoize %s: cached value could not be decoded (%s: %s); computing it again",
            self._qualname,
            type(exc).__name__,
            exc,
        )
        self.bucket.delete(key)
        return self._compute(key, args, kwargs)

    def _explain(self, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> Exception:
        """The error for a key that cannot be encoded, naming the argument."""
        plan = self._prepare()
        if self._key_fn is not None:
            return type(exc)(f"the key function of memoized {self._qualname}() returned an invalid key: {exc}")
        values = plan.bind(args, kwargs)
        for i, (name, value) in enumerate(zip(plan.names, values)):
            if i == 0 and plan.receiver is not None:
                continue
            try:
                _keys.encode_key(value)
            except (TypeError, ValueError) as bad:
                return type(bad)(
                    f"memoized {self._qualname}(): argument {name!r} cannot be part of a cache key: {bad}; "
                    "pass key= to memoize to say what identifies a call (docs/memoize.md)"
                )
        return exc

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> object:
        """The key a call with these arguments reads and stores (a structured
        key, docs/keys.md): ``bucket.get(f.cache_key(x))`` returns the
        encoded value.  Raises what the call would for invalid arguments."""
        key = self._make_key(args, kwargs)
        try:
            _keys.encode_key(key)
        except (TypeError, ValueError) as exc:
            raise self._explain(args, kwargs, exc) from None
        return key

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Remove the cached value of a call with these arguments; True if
        there was one.  The next such call computes it again."""
        return self.bucket.delete(self.cache_key(*args, **kwargs))

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Memoized[P, R]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> BoundMemoized[R]: ...
    def __get__(self, instance: object, owner: type | None = None) -> Memoized[P, R] | BoundMemoized[R]:
        """As a method: bound to ``instance``, like a function."""
        if instance is None:
            return self
        return BoundMemoized(self, instance)

    def __reduce__(self) -> str:
        # Pickled by name, like the function it replaces (ProcessPoolExecutor
        # and multiprocessing ship functions that way).
        return self._qualname

    def __repr__(self) -> str:
        return f"<memoized {self._module}.{self._qualname} in {self.bucket!r}>"


class BoundMemoized(Generic[R]):
    """A memoized method bound to an instance: call it, ``cache_key`` and
    ``invalidate`` take the arguments after ``self``."""

    __slots__ = ("__func__", "__self__")

    def __init__(self, memo: Memoized[Any, R], instance: object) -> None:
        self.__func__ = memo
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.__func__(self.__self__, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> object:
        return self.__func__.cache_key(self.__self__, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        return self.__func__.invalidate(self.__self__, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<bound {self.__func__!r} of {self.__self__!r}>"


@overload
def memoize(
    bucket: Bucket,
    fn: Callable[P, R],
    /,
    *,
    codec: object = "json",
    ttl: float | None = None,
    key: Callable[..., object] | None = None,
    source: bool = True,
) -> Memoized[P, R]: ...
@overload
def memoize(
    bucket: Bucket,
    codec: str = "json",
    /,
    *,
    ttl: float | None = None,
    key: Callable[..., object] | None = None,
    source: bool = True,
) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...
@overload
def memoize(
    bucket: Bucket,
    /,
    *,
    codec: object = "json",
    ttl: float | None = None,
    key: Callable[..., object] | None = None,
    source: bool = True,
) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...
def memoize(
    bucket: Bucket,
    fn: object = None,
    /,
    *,
    codec: object = None,
    ttl: float | None = None,
    key: Callable[..., object] | None = None,
    source: bool = True,
) -> Memoized[Any, Any] | Callable[[Callable[P, R]], Memoized[P, R]]:
    """``Bucket.memoize``: ``@bucket.memoize``, ``@bucket.memoize(codec=...,
    ttl=..., key=..., source=...)``, ``@bucket.memoize("pickle")`` (a codec
    given first, as ``functools.lru_cache(128)`` takes its size), or
    ``bucket.memoize(fn, ...)``.  The options are checked here, at
    decoration: an unknown codec raises ValueError, a wrong type TypeError."""
    if isinstance(fn, str) or (fn is not None and _is_codec_object(fn)):
        if codec is not None:
            raise TypeError("memoize() got the codec twice: positionally and as codec=")
        fn, codec = None, fn
    spec = _codec_spec("json" if codec is None else codec)
    if ttl is not None:
        _write.expires_ns(ttl, 0)
    if key is not None and not callable(key):
        raise TypeError(f"key must be a function returning a cache key, not {type(key).__name__}")
    if fn is not None:
        return Memoized(bucket, fn, codec=spec, ttl=ttl, key=key, source=source)  # type: ignore[arg-type]

    def decorate(fn: Callable[P, R]) -> Memoized[P, R]:
        return Memoized(bucket, fn, codec=spec, ttl=ttl, key=key, source=source)

    return decorate
