"""Specification of cache keys: ``safecache._keys`` (format: docs/keys.md)."""

from __future__ import annotations

import enum
import hashlib
import importlib
import importlib.util
import math
import os
import re
import struct
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

KEYS_FILE = Path(__file__).resolve().parent.parent / "src" / "safecache" / "_keys.py"


def _load_keys_module():
    # The package __init__ is being written in parallel; fall back to loading
    # the module file directly so these tests depend only on _keys.py.
    try:
        return importlib.import_module("safecache._keys")
    except Exception:
        spec = importlib.util.spec_from_file_location("safecache_keys_under_test", KEYS_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


_keys = _load_keys_module()
encode_key = _keys.encode_key
decode_key = _keys.decode_key
key_digest = _keys.key_digest
describe_key = _keys.describe_key
KeyPath = _keys.KeyPath

NAN = float("nan")
INF = float("inf")
P = PurePosixPath
W = PureWindowsPath


class FsPath:
    """A minimal os.PathLike that is not a pathlib object."""

    def __init__(self, value):
        self.value = value

    def __fspath__(self):
        return self.value

    def __repr__(self):
        return f"FsPath({self.value!r})"


def canon(x):
    """What a key means, written independently of the implementation.

    Two keys are the same key exactly when their ``canon`` values are equal.
    It is type-strict (unlike ``==``, where ``1 == 1.0 == True`` and
    ``0.0 == -0.0``) and maps every NaN to one value.
    """
    if isinstance(x, os.PathLike):
        if isinstance(x, KeyPath):
            text = str.__str__(x)
        elif isinstance(x, PurePath):
            text = x.as_posix()
        else:
            text = os.fspath(x)
            if isinstance(text, bytes):
                text = os.fsdecode(text)
            if os.sep == "\\":
                text = text.replace("\\", "/")
        return ("path", text)
    if x is None:
        return ("none",)
    if isinstance(x, bool):
        return ("bool", x)
    if isinstance(x, int):
        return ("int", int(x))
    if isinstance(x, float):
        return ("float", "nan") if math.isnan(x) else ("float", struct.pack(">d", x))
    if isinstance(x, str):
        return ("str", str(x))
    if isinstance(x, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(x))
    if isinstance(x, (tuple, list)):
        return ("seq", tuple(canon(item) for item in x))
    if isinstance(x, dict):
        return ("dict", frozenset((k, canon(v)) for k, v in x.items()))
    raise AssertionError(f"not a key: {x!r}")


def is_decoded_form(v):
    """True if ``v`` uses only the types decode_key documents it returns."""
    if type(v) is tuple:
        return all(is_decoded_form(item) for item in v)
    if type(v) is dict:
        return all(type(k) is str and is_decoded_form(item) for k, item in v.items())
    return type(v) in (str, bytes, int, bool, float, type(None), KeyPath)


def nested(depth):
    """A tuple nesting ``depth`` containers: nested(1) == ()."""
    x = ()
    for _ in range(depth - 1):
        x = (x,)
    return x


# -- golden vectors ------------------------------------------------------
#
# These pin the format forever: a change here changes every digest of every
# cache.  Two of them written out by hand from docs/keys.md:
#
#   ("a", [1, (b"x", None)], [])
#     4b31        prefix "K1"
#     6c 03       'l' sequence, 3 items
#     73 01 61      's' str, 1 byte, "a"
#     6c 02         'l' sequence, 2 items
#     69 01 01        'i' int, 1 byte, 0x01
#     6c 02           'l' sequence, 2 items
#     62 01 78          'b' bytes, 1 byte, "x"
#     4e                'N' None
#     6c 00         'l' sequence, 0 items
#
#   {"b": 1, "a": [True], "é": None, "aa": {}}   (entries sorted by UTF-8 key)
#     4b31 6d 04  prefix, 'm' dict, 4 entries
#     01 61       6c 01 54   "a":  sequence of 1: 'T' True
#     02 6161     6d 00      "aa": empty dict
#     01 62       69 01 01   "b":  int 1
#     02 c3a9     4e         "é":  None
#
# Also: -(2**200) needs 201 bits signed = 26 bytes (0x1a): ff then 25 zero
# bytes; 128 needs two bytes (00 80) but -128 only one (80); a 130-byte str
# has the varint length 130 = 0b1_0000010 -> 82 01.

GOLDEN = [
    ("", "4b317300", "db8b441c743b104bbc879919515c3c3d"),
    ("lint", "4b3173046c696e74", "637b5e7a43ca54d53190fc20d8742da9"),
    ("é€😀", "4b317309c3a9e282acf09f9880", "955c2fd417a578d8824fd82550fea82a"),
    ("\udc80", "4b317303edb280", "e75c2d95ce007765c00ca8efb826a8dd"),
    ("x" * 130, "4b3173" + "8201" + "78" * 130, "40710f749d47724afd0a99e2a8d6ad16"),
    (b"", "4b316200", "2cb6e28229cee9cc1a486185c125c16c"),
    (b"\x00\xff", "4b31620200ff", "e82ce71b3558de743f3e5c8d6b2068fd"),
    (0, "4b31690100", "b32fd63290705e7684a11db408a5fbfa"),
    (127, "4b3169017f", "8574c010993785c9efedf477f18c9990"),
    (128, "4b3169020080", "67cf754d337ac2cd34a53a8ca9720f8d"),
    (-1, "4b316901ff", "8914b17e7f6effe015cacc003604a29d"),
    (-128, "4b31690180", "ab64413a1710addc61bfe42283cdc83f"),
    (2**64, "4b316909010000000000000000", "36a8ead96863a3f9e91477d2881cfb24"),
    (-(2**200), "4b31691aff" + "00" * 25, "fd68c7317419cc81a1956c7b3c93b0d1"),
    (True, "4b3154", "7e30447bac03fd945517bb5ef931babe"),
    (False, "4b3146", "d77bd43ae18291691fa8b83f6686f2c5"),
    (None, "4b314e", "b313413f0b5fdeeac558f09b50c002d3"),
    (0.0, "4b31640000000000000000", "edf265b26f6d79d70360ac88c0f22d74"),
    (-0.0, "4b31648000000000000000", "2d17d8d129524afad2e1b57c9c420d00"),
    (NAN, "4b31647ff8000000000000", "42995da77481174fe453f6a7c49b5f36"),
    (INF, "4b31647ff0000000000000", "fd3341e10c08a3748c56e77bb511433b"),
    (1.5, "4b31643ff8000000000000", "642c3fb1909d0dcd5f6a074815060b8e"),
    (("1",), "4b316c01730131", "c51f40ccac8713da537c80b27fc68bdf"),
    ((), "4b316c00", "0bb29d256b58ec8c71a9b38d64ce9a82"),
    (
        ("a", [1, (b"x", None)], []),
        "4b316c037301616c026901016c026201784e6c00",
        "95d3964571f148cbca8edaaa10ccabc4",
    ),
    (
        {"b": 1, "a": [True], "é": None, "aa": {}},
        "4b316d0401616c01540261616d00016269010102c3a94e",
        "82e3d0c39dffa536e1a9840336c817e8",
    ),
    (
        {"aa": {}, "é": None, "a": [True], "b": 1},
        "4b316d0401616c01540261616d00016269010102c3a94e",
        "82e3d0c39dffa536e1a9840336c817e8",
    ),
    (P("a/b"), "4b317003612f62", "898b93f7dcd1cae4f95be1e80d666b2e"),
    (W("a\\b"), "4b317003612f62", "898b93f7dcd1cae4f95be1e80d666b2e"),
    ("a/b", "4b317303612f62", "3e67c0b9fd6a8986e39e9c34ca1f4aab"),
    (
        ("lint", P("src/a.py"), {"line-length": 88}),
        "4b316c0373046c696e7470087372632f612e70796d010b6c696e652d6c656e677468690158",
        "2dcf674df146731e67119406f6523296",
    ),
]

golden = pytest.mark.parametrize(
    ("key", "encoding", "digest"), GOLDEN, ids=[repr(g[0])[:40] for g in GOLDEN]
)


@golden
def test_golden_vector_encoding(key, encoding, digest):
    assert encode_key(key).hex() == encoding


@golden
def test_golden_vector_digest(key, encoding, digest):
    assert key_digest(key) == digest


@golden
def test_golden_digest_is_blake2b_128_of_the_encoding(key, encoding, digest):
    assert hashlib.blake2b(bytes.fromhex(encoding), digest_size=16).hexdigest() == digest


# -- equivalences and distinctions ---------------------------------------


def test_str_bytes_int_float_bool_and_tuple_are_six_different_keys():
    keys = ["1", b"1", 1, 1.0, True, ("1",)]
    assert len({key_digest(k) for k in keys}) == 6


def test_path_and_the_same_str_are_different_keys():
    assert key_digest(P("a/b")) != key_digest("a/b")


def test_tuple_and_list_are_the_same_key():
    assert encode_key((1, ["a", (b"x",)])) == encode_key([1, ("a", [b"x"])])


def test_dict_item_order_does_not_matter():
    assert encode_key({"x": 1, "y": 2, "z": 3}) == encode_key({"z": 3, "x": 1, "y": 2})


def test_dict_entries_are_ordered_by_utf8_bytes_not_utf16_code_units():
    # U+FFFF (EF BF BF) sorts before U+10000 (F0 90 80 80) in UTF-8 and by
    # code point, but after it in UTF-16 (FFFF > D800 DC00).
    assert encode_key({"\U00010000": 1, "\uffff": 2}).hex() == (
        "4b316d02" + "03efbfbf" + "690102" + "04f0908080" + "690101"
    )


def test_bytes_bytearray_and_memoryview_are_the_same_key():
    assert encode_key(b"abc") == encode_key(bytearray(b"abc")) == encode_key(memoryview(b"abc"))


def test_all_nans_are_the_same_key():
    other_nan = struct.unpack(">d", bytes.fromhex("fff0000000000001"))[0]
    assert encode_key(NAN) == encode_key(-NAN) == encode_key(other_nan)


def test_negative_zero_and_zero_are_different_keys():
    assert encode_key(-0.0) != encode_key(0.0)


def test_int_and_bool_are_different_keys():
    assert encode_key(1) != encode_key(True)
    assert encode_key(0) != encode_key(False)


def test_subclass_instances_encode_as_their_base_type():
    class Level(enum.IntEnum):
        HIGH = 3

    class Name(str):
        pass

    Pair = namedtuple("Pair", "a b")
    assert encode_key(Level.HIGH) == encode_key(3)
    assert encode_key(Name("x")) == encode_key("x")
    assert encode_key(Pair(1, 2)) == encode_key((1, 2))


def test_windows_and_posix_pure_paths_with_the_same_parts_are_the_same_key():
    assert encode_key(W("src\\a.py")) == encode_key(P("src/a.py"))


def test_concrete_path_is_the_same_key_as_its_pure_posix_form():
    assert encode_key(Path("src") / "a.py") == encode_key(P("src/a.py"))


def test_other_pathlike_uses_fspath():
    assert encode_key(FsPath("src/a.py")) == encode_key(P("src/a.py"))


def test_bytes_pathlike_is_decoded_with_fsdecode():
    assert encode_key(FsPath(b"src/a.py")) == encode_key(FsPath("src/a.py"))


def test_paths_are_not_resolved_or_normalised():
    assert encode_key(P("a/../b")) != encode_key(P("b"))
    assert encode_key(P("/a")) != encode_key(P("a"))
    assert encode_key(FsPath("./a")) != encode_key(FsPath("a"))


def test_posix_path_keeps_a_backslash_as_a_name_character():
    assert decode_key(encode_key(P("a\\b"))) == KeyPath("a\\b")


def test_pathlike_backslashes_become_slashes_only_where_backslash_is_the_separator(monkeypatch):
    monkeypatch.setattr(_keys, "_BACKSLASH_IS_SEP", True)
    assert encode_key(FsPath("a\\b")) == encode_key(P("a/b"))
    monkeypatch.setattr(_keys, "_BACKSLASH_IS_SEP", False)
    assert encode_key(FsPath("a\\b")) != encode_key(P("a/b"))


def test_keypath_is_encoded_verbatim_on_every_platform(monkeypatch):
    monkeypatch.setattr(_keys, "_BACKSLASH_IS_SEP", True)
    assert decode_key(encode_key(KeyPath("a\\b"))) == KeyPath("a\\b")


def test_keypath_never_equals_a_plain_str():
    assert KeyPath("a") != "a"
    assert "a" != KeyPath("a")
    assert KeyPath("a") == KeyPath("a")


# -- decoding ------------------------------------------------------------


def test_decode_returns_the_normalised_python_value():
    key = [1, bytearray(b"x"), memoryview(b"y"), (P("a"),), {"k": [None]}]
    decoded = decode_key(encode_key(key))
    assert decoded == (1, b"x", b"y", (KeyPath("a"),), {"k": (None,)})
    assert is_decoded_form(decoded)


MALFORMED = [
    ("empty", b""),
    ("other format prefix", b"K2s\x00"),
    ("no value", b"K1"),
    ("trailing bytes", b"K1s\x00\x00"),
    ("truncated str", b"K1s\x05ab"),
    ("truncated varint", b"K1s\x80"),
    ("non-minimal varint", b"K1s\x80\x00"),
    ("empty int", b"K1i\x00"),
    ("non-minimal positive int", b"K1i\x02\x00\x01"),
    ("non-minimal negative int", b"K1i\x02\xff\xff"),
    ("truncated float", b"K1d\x00"),
    ("non-canonical NaN", b"K1d" + bytes.fromhex("7ff8000000000001")),
    ("negative NaN", b"K1d" + bytes.fromhex("fff8000000000000")),
    ("unsorted dict keys", b"K1m\x02\x01bN\x01aN"),
    ("duplicate dict keys", b"K1m\x02\x01aN\x01aN"),
    ("invalid UTF-8", b"K1s\x01\xff"),
    ("unknown tag", b"K1?"),
    ("too deep", b"K1" + b"l\x01" * 64 + b"l\x00"),
]


@pytest.mark.parametrize("data", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_decode_rejects_malformed_input(data):
    with pytest.raises(ValueError):
        decode_key(data)


def test_decode_accepts_the_maximum_depth():
    assert decode_key(b"K1" + b"l\x01" * 63 + b"l\x00") == nested(64)


# -- errors --------------------------------------------------------------


def test_unsupported_type_raises_type_error_naming_the_type():
    with pytest.raises(TypeError, match=r"unsupported type 'set' in cache key at key;"):
        encode_key({1, 2})


def test_unsupported_type_error_says_where_in_the_key_it_is():
    with pytest.raises(TypeError, match=re.escape("'object' in cache key at key[2]['opts'][0];")):
        encode_key(("lint", 1, {"opts": [object()]}))


def test_unsupported_user_class_is_named_with_its_module():
    class Custom:
        pass

    with pytest.raises(TypeError, match=re.escape(f"'{__name__}.")):
        encode_key([Custom()])


def test_dict_with_non_str_keys_raises_type_error():
    message = "dict key 1 of type 'int' in cache key at key[0]: dict keys must be str"
    with pytest.raises(TypeError, match=re.escape(message)):
        encode_key([{1: "x"}])


def test_pathlike_returning_a_non_path_raises_type_error():
    with pytest.raises(TypeError, match=re.escape("bad path object in cache key at key[1]")):
        encode_key(["a", FsPath(3)])


def test_key_digest_raises_like_encode_key():
    with pytest.raises(TypeError):
        key_digest({1.5: 2})


def test_nesting_up_to_the_maximum_depth_is_allowed():
    assert _keys.MAX_DEPTH == 64
    encode_key(nested(64))


def test_nesting_deeper_than_the_maximum_raises_value_error():
    with pytest.raises(ValueError, match="deeper than 64"):
        encode_key(nested(65))


def test_dict_nesting_counts_towards_the_depth():
    key = {}
    for _ in range(64):
        key = {"k": key}
    with pytest.raises(ValueError, match="deeper than 64"):
        encode_key(key)


def test_a_list_containing_itself_raises_value_error():
    cycle = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="deeper than 64"):
        key_digest(cycle)


# -- describe_key --------------------------------------------------------


def test_describe_shows_types_in_python_syntax():
    key = ["lint", P("src/a.py"), {"line-length": 88, "fix": True}, b"\x00", 1.0, None]
    assert describe_key(key) == (
        "('lint', path('src/a.py'), {'fix': True, 'line-length': 88}, b'\\x00', 1.0, None)"
    )


def test_describe_shows_length_and_first_bytes_of_long_bytes():
    assert describe_key(bytes(range(100))) == (
        f"bytes(len=100, {bytes(range(16))!r}...)"
    )


def test_describe_shortens_long_str_and_huge_int():
    assert describe_key("y" * 1000) == f"str(len=1000, {'y' * 60!r}...)"
    assert describe_key(2**200) == f"int(bits=201, {hex(2**200)[:24]}...)"


def test_describe_is_the_same_for_equivalent_keys():
    assert describe_key([1, bytearray(b"x"), {"b": 1, "a": 2}]) == describe_key(
        (1, b"x", {"a": 2, "b": 1})
    )


def test_describe_raises_like_encode_key():
    with pytest.raises(TypeError, match="'set'"):
        describe_key(("a", {1}))


# -- properties ----------------------------------------------------------

_plain_text = st.text(max_size=8)
_text_with_surrogates = st.lists(
    st.characters(codec=None) | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    max_size=8,
).map("".join)
texts = _plain_text | _text_with_surrogates
binaries = st.binary(max_size=12)


def _nan(sign, payload):
    return struct.unpack(">d", struct.pack(">Q", (sign << 63) | (0x7FF << 52) | payload))[0]


floats = st.floats() | st.builds(_nan, st.integers(0, 1), st.integers(1, 2**52 - 1))
paths = st.one_of(
    texts.map(P),
    texts.map(W),
    texts.map(FsPath),
    _plain_text.map(lambda s: FsPath(s.encode("utf-8"))),
    texts.map(KeyPath),
)
atoms = st.one_of(
    texts,
    binaries,
    binaries.map(bytearray),
    binaries.map(memoryview),
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.booleans(),
    st.none(),
    floats,
    paths,
)
keys = st.recursive(
    atoms,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(texts, children, max_size=4),
    ),
    max_leaves=20,
)

# A small domain in which different values often mean the same key.
_look_alikes = st.sampled_from(
    [
        "1", b"1", bytearray(b"1"), 1, 1.0, True, False, 0, 0.0, -0.0, None, "", b"",
        NAN, _nan(1, 5), P("1"), W("1"), FsPath("1"), KeyPath("1"),
    ]
)
look_alike_keys = st.recursive(
    _look_alikes,
    lambda children: st.one_of(
        st.lists(children, max_size=2),
        st.lists(children, max_size=2).map(tuple),
        st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=2),
    ),
    max_leaves=4,
)


@settings(max_examples=500)
@given(keys)
def test_decode_inverts_encode_up_to_the_documented_equivalences(key):
    # decode_key is a function, so this also proves encode_key injective:
    # equal encodings decode to one value, whose canon is that of both keys.
    assert canon(decode_key(encode_key(key))) == canon(key)


@given(keys)
def test_decoded_values_use_only_the_normalised_types(key):
    assert is_decoded_form(decode_key(encode_key(key)))


@settings(max_examples=1000)
@given(look_alike_keys, look_alike_keys)
def test_same_encoding_exactly_when_same_canonical_value(a, b):
    assert (encode_key(a) == encode_key(b)) == (canon(a) == canon(b))


@given(keys)
def test_digest_is_32_lowercase_hex_chars_of_blake2b_128(key):
    digest = key_digest(key)
    assert re.fullmatch(r"[0-9a-f]{32}", digest)
    assert digest == hashlib.blake2b(encode_key(key), digest_size=16).hexdigest()


class _Str(str):
    pass


@given(st.text(max_size=300) | _text_with_surrogates)
def test_str_fast_path_matches_the_general_encoder(text):
    # A str subclass takes the general, recursive path.
    assert encode_key(text) == encode_key(_Str(text))
    assert key_digest(text) == key_digest(_Str(text))


@given(st.binary(max_size=300))
def test_bytes_fast_path_matches_the_general_encoder(data):
    assert encode_key(data) == encode_key(bytearray(data))
    assert key_digest(data) == key_digest(bytearray(data))


@given(st.binary(max_size=40))
def test_decode_of_arbitrary_bytes_is_strict(tail):
    try:
        value = decode_key(b"K1" + tail)
    except ValueError:
        return
    assert encode_key(value) == b"K1" + tail


@given(keys, st.data())
def test_decode_of_a_damaged_encoding_is_strict(key, data):
    encoded = bytearray(encode_key(key))
    i = data.draw(st.integers(2, len(encoded) - 1))
    encoded[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(2, len(encoded)))
    damaged = bytes(encoded[:cut])
    try:
        value = decode_key(damaged)
    except ValueError:
        return
    assert encode_key(value) == damaged


# -- import cost ---------------------------------------------------------

_PROBE = textwrap.dedent(
    """
    import importlib.util, sys
    heavy = ("hashlib", "pathlib", "typing")
    assert not [m for m in heavy if m in sys.modules], "precondition"
    spec = importlib.util.spec_from_file_location("safecache_keys_probe", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if sys.argv[2] == "use":
        module.key_digest("a")
        module.key_digest(b"a")
        module.key_digest(("a", 1, 2.5, None, {"k": [b"x"]}))
        module.describe_key(("a", 1))
    print(",".join(m for m in heavy if m in sys.modules))
    """
)


def _heavy_modules_after(action):
    # -I -S: no site, no .pth files, no environment: nothing else imports them.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _PROBE, str(KEYS_FILE), action],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_importing_does_not_import_hashlib_pathlib_or_typing():
    assert _heavy_modules_after("import") == ""


def test_computing_digests_does_not_import_hashlib_pathlib_or_typing():
    assert _heavy_modules_after("use") == ""
