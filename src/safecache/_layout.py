"""The on-disk layout, spelled once: directory names, path builders, name predicates.

docs/format.md is its specification.  A root holds::

    CACHEDIR.TAG  .gitignore  README        markers (written before anything else)
    buckets/<name>/v<N>/<xx>/<digest>       entries (xx: the digest's first two hex digits)
    buckets/<name>/v<N>/<xx>/<digest>.meta  metadata replaced after the put (set_meta)
    buckets/<name>/v<N>/trees/<xx>/<digest> tree pointers (entries whose payload is a manifest)
    buckets/<name>/v<N>/tree-objects/<id>/  committed trees (<id>: 32 random hex digits)
    buckets/<name>/v<N>/tree-objects/<id>.tmp/        a tree being built
    buckets/<name>/v<N>/tree-objects/<id>.del-<r>/    a tree being removed
    locks/<name>/v<N>/<xx>/<digest>.lock             compute-once for an entry
    locks/<name>/v<N>/trees/<xx>/<digest>.lock       compute-once for a tree
    locks/<name>/v<N>/tree-objects/<id>.lock         a tree in use (shared) or being removed
    locks/trim.lock                         one trimmer at a time
    stats/<0-f>  stats/<0-f>.lock           counter shards (one per pid % 16) and their locks
    stats/baseline  stats/trim              counters rebased by a scan; the last trim time
    .trash-<r>/                             a bucket version being removed

No other module spells these names: they ask here.  Keys never become paths:
a path is built from a validated bucket name, a version number and a hex
digest, so nothing a caller passes can reach outside the root.
"""

from __future__ import annotations

import os

from ._fs import TEMP_SUFFIX

# -- names -------------------------------------------------------------------------
BUCKETS = "buckets"
LOCKS = "locks"
STATS = "stats"
TREES = "trees"
TREE_OBJECTS = "tree-objects"
CACHEDIR_TAG = "CACHEDIR.TAG"
GITIGNORE = ".gitignore"
README = "README"
#: The markers, in the order they are written.
MARKERS = (CACHEDIR_TAG, GITIGNORE, README)
TRIM_STAMP = "trim"
TRIM_LOCK = "trim.lock"
STATS_BASELINE = "baseline"
STATS_SHARDS = 16
TRASH_PREFIX = ".trash-"
LOCK_SUFFIX = ".lock"
#: ``<entry>.meta``: metadata replaced after the put (``Bucket.set_meta``).
META_SUFFIX = ".meta"
STAGING_SUFFIX = TEMP_SUFFIX
DOOMED_INFIX = ".del-"
#: How the Windows emulator names a file deleted while open (Windows keeps
#: listing it until the last handle closes).
ZOMBIE_INFIX = ".~delete-pending-"

_HEXDIGITS = "0123456789abcdef"
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_NAME_CHARS = _NAME_START | frozenset("._-")
# Names Windows reserves in every directory, with or without an extension.
_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"{p}{i}" for p in ("com", "lpt") for i in range(10)]
)


# -- bucket names and labels ----------------------------------------------------------
def valid_bucket_name(name: str) -> bool:
    """1-64 characters of a-z 0-9 . _ -, starting with a letter or digit, not
    a Windows reserved device name (with or without an extension)."""
    return (
        0 < len(name) <= 64
        and name[0] in _NAME_START
        and all(c in _NAME_CHARS for c in name)
        and name.split(".", 1)[0] not in _WINDOWS_RESERVED
    )


def version_dir(version: int) -> str:
    return f"v{version}"


def parse_version_dir(name: str) -> int | None:
    """``"v3"`` -> 3; None for anything that is not a version directory name."""
    digits = name[1:]
    if name.startswith("v") and digits.isascii() and digits.isdigit() and len(digits) <= 10 and int(digits) < 2**31:
        if digits == str(int(digits)):  # no leading zeros: "v03" is not v3's directory
            return int(digits)
    return None


def label(name: str, version: int) -> str:
    """How a bucket version is named in counters, reports and the CLI: ``lint/v3``."""
    return f"{name}/v{version}"


def parse_label(spec: str) -> tuple[str, int | None]:
    """``"lint"`` -> ("lint", None); ``"lint/v3"`` -> ("lint", 3).  ValueError
    for anything else (a programming error, raised in both modes)."""
    name, _, version = spec.partition("/")
    if not valid_bucket_name(name):
        raise ValueError(f"invalid bucket {spec!r}: expected a bucket name or name/vN")
    if not version:
        return name, None
    digits = version[1:]
    if not (version.startswith("v") and digits.isascii() and digits.isdigit() and len(digits) <= 10 and int(digits) < 2**31):
        raise ValueError(f"invalid bucket {spec!r}: expected a bucket name or name/vN")
    return name, int(digits)


# -- paths -----------------------------------------------------------------------------
def buckets_dir(root: str) -> str:
    return os.path.join(root, BUCKETS)


def locks_dir(root: str) -> str:
    return os.path.join(root, LOCKS)


def stats_dir(root: str) -> str:
    return os.path.join(root, STATS)


def bucket_dir(root: str, name: str, version: int | str) -> str:
    """A bucket version's directory; ``version`` is a number or a ``vN`` name."""
    vdir = version if isinstance(version, str) else version_dir(version)
    return os.path.join(root, BUCKETS, name, vdir)


def bucket_locks_dir(root: str, name: str, version: int | str) -> str:
    vdir = version if isinstance(version, str) else version_dir(version)
    return os.path.join(root, LOCKS, name, vdir)


def entry_path(bucket: str, digest: str) -> str:
    """An entry's file in the bucket directory ``bucket``.  Built by string
    concatenation: it is on the path of every get."""
    return f"{bucket}{os.sep}{digest[:2]}{os.sep}{digest}"


def meta_path(entry: str) -> str:
    """The metadata sidecar of the entry file ``entry``."""
    return entry + META_SUFFIX


def is_meta(name: str) -> bool:
    """A metadata sidecar: ``<digest>.meta``."""
    return name.endswith(META_SUFFIX) and is_hex(name[: -len(META_SUFFIX)], 32)


def entry_lock(locks: str, digest: str) -> str:
    return os.path.join(locks, digest[:2], digest + LOCK_SUFFIX)


def trees_dir(bucket: str) -> str:
    return os.path.join(bucket, TREES)


def tree_objects_dir(bucket: str) -> str:
    return os.path.join(bucket, TREE_OBJECTS)


def tree_pointer(bucket: str, digest: str) -> str:
    return os.path.join(bucket, TREES, digest[:2], digest)


def tree_object(bucket: str, tree_id: str) -> str:
    return os.path.join(bucket, TREE_OBJECTS, tree_id)


def tree_staging(bucket: str, tree_id: str) -> str:
    return os.path.join(bucket, TREE_OBJECTS, tree_id + STAGING_SUFFIX)


def doomed_name(path: str, tag: str) -> str:
    """The name a directory (a tree object) is renamed to before it is removed."""
    return f"{path}{DOOMED_INFIX}{tag}"


def tree_key_lock(locks: str, digest: str) -> str:
    return os.path.join(locks, TREES, digest[:2], digest + LOCK_SUFFIX)


def tree_object_lock(locks: str, tree_id: str) -> str:
    return os.path.join(locks, TREE_OBJECTS, tree_id + LOCK_SUFFIX)


def trim_lock(root: str) -> str:
    return os.path.join(root, LOCKS, TRIM_LOCK)


def trim_stamp(root: str) -> str:
    return os.path.join(root, STATS, TRIM_STAMP)


def stats_shard(root: str, pid: int | None = None) -> str:
    """This process's counter shard (one of 16, chosen by pid)."""
    return os.path.join(root, STATS, f"{(os.getpid() if pid is None else pid) % STATS_SHARDS:x}")


def stats_shard_n(root: str, n: int) -> str:
    return os.path.join(root, STATS, f"{n:x}")


def stats_shard_lock(root: str, n: int) -> str:
    return os.path.join(root, STATS, f"{n:x}{LOCK_SUFFIX}")


def stats_baseline(root: str) -> str:
    return os.path.join(root, STATS, STATS_BASELINE)


def trash_name(root: str, tag: str) -> str:
    return os.path.join(root, TRASH_PREFIX + tag)


# -- predicates --------------------------------------------------------------------------
def is_hex(name: str, n: int) -> bool:
    # strip() stops at the first character that is not a hex digit, so
    # anything but n hex digits leaves something behind.
    return len(name) == n and not name.strip(_HEXDIGITS)


def is_shard(name: str) -> bool:
    """An entry fan-out directory: two hex digits."""
    return is_hex(name, 2)


def is_digest(name: str) -> bool:
    """An entry or pointer file name: a 32-hex-digit key digest."""
    return is_hex(name, 32)


def is_temp(name: str) -> bool:
    """A temp file being written beside its target (or a crashed writer's leftover)."""
    return name.endswith(TEMP_SUFFIX)


def is_tree_id(name: str) -> bool:
    return is_hex(name, 32)


def is_staging(name: str) -> bool:
    """A tree being built: ``<id>.tmp``."""
    return name.endswith(STAGING_SUFFIX) and is_hex(name[: -len(STAGING_SUFFIX)], 32)


def is_doomed(name: str) -> bool:
    """A tree being removed: ``<id>.del-<r>``."""
    return len(name) > 37 and name[32:37] == DOOMED_INFIX and is_hex(name[:32], 32)


def is_trash(name: str) -> bool:
    return name.startswith(TRASH_PREFIX)


def is_zombie(name: str) -> bool:
    """A name Windows still lists for a file deleted while open."""
    return ZOMBIE_INFIX in name


# -- for maintenance, which walks what the rest builds ------------------------------------
def dir_label(name: str, vdir: str) -> str:
    """:func:`label` from a version directory's name (``"lint"``, ``"v3"`` ->
    ``lint/v3``); it also names directories no safecache would make, which
    ``clean`` removes too."""
    return f"{name}/{vdir}"


def shard_of(digest: str) -> str:
    """The fan-out directory an entry or tree pointer named ``digest`` belongs in."""
    return digest[:2]


def tree_object_locks_dir(locks: str) -> str:
    """Where the locks of a bucket version's tree objects live (``locks`` is
    its :func:`bucket_locks_dir`)."""
    return os.path.join(locks, TREE_OBJECTS)


def tree_id_of(name: str) -> str:
    """The tree id a name in ``tree-objects/`` is about: ``<id>``, ``<id>.tmp``
    or ``<id>.del-<r>``."""
    return name[:32]


def lock_tree_id(name: str) -> str | None:
    """The tree id of a tree object's lock file name (``<id>.lock``); None
    for any other name."""
    tree_id = name[: -len(LOCK_SUFFIX)]
    return tree_id if name.endswith(LOCK_SUFFIX) and is_tree_id(tree_id) else None


# -- tree ids ------------------------------------------------------------------------------
def new_tree_id() -> str:
    """A fresh tree id: 32 random hex digits, so commits never collide and an
    id is never reused (a removed tree's lock file can then be deleted)."""
    return os.urandom(16).hex()


def staging_tree_id(staging: str) -> str:
    """The tree id of the staging directory ``staging`` (``.../<id>.tmp``)."""
    return os.path.basename(staging)[: -len(STAGING_SUFFIX)]


# -- doctor's scratch directory ------------------------------------------------------------
#: ``safecache doctor`` probes each operation in ``.doctor-<pid>/`` inside the
#: root, and removes it afterwards.
DOCTOR_SCRATCH_PREFIX = ".doctor-"


def doctor_scratch(root: str, pid: int | None = None) -> str:
    """The scratch directory of the doctor running as ``pid`` (default: this process)."""
    return os.path.join(root, f"{DOCTOR_SCRATCH_PREFIX}{os.getpid() if pid is None else pid}")


#: ``safecache doctor`` tries each link mode in ``.safecache-doctor-<pid>-<r>/``
#: inside the link target (the current directory by default), outside the cache.
DOCTOR_PROBE_PREFIX = ".safecache-doctor-"


def doctor_scratch_prefix(pid: int | None = None) -> str:
    """The name prefix of doctor's scratch directory in the root:
    ``.doctor-<pid>-``, to which :func:`._fs.make_temp_dir` appends 16 random
    hex digits, creating it exclusively (a name that exists, planted or left
    by a killed doctor, is never reused)."""
    return f"{DOCTOR_SCRATCH_PREFIX}{os.getpid() if pid is None else pid}-"


def doctor_probe_prefix(pid: int | None = None) -> str:
    """The name prefix of doctor's link-probe directory in the target."""
    return f"{DOCTOR_PROBE_PREFIX}{os.getpid() if pid is None else pid}-"


def _pid_and_random(rest: str, *, optional: bool) -> bool:
    pid, dash, tag = rest.partition("-")
    if not (pid.isascii() and pid.isdigit() and len(pid) <= 10):
        return False
    return (optional and not dash) or is_hex(tag, 16)


def is_doctor_scratch(name: str) -> bool:
    """A scratch directory of doctor in the root: ``.doctor-<pid>-<16 hex>``,
    or ``.doctor-<pid>`` (the name earlier doctors used).  One that outlives
    its doctor (killed) is a leftover that nothing else uses; a live doctor's
    is minutes old at most, so reclaim it only when old, as other leftovers."""
    return name.startswith(DOCTOR_SCRATCH_PREFIX) and _pid_and_random(name[len(DOCTOR_SCRATCH_PREFIX):], optional=True)


def is_doctor_probe(name: str) -> bool:
    """A link-probe directory of doctor in a target: ``.safecache-doctor-<pid>-<16 hex>``."""
    return name.startswith(DOCTOR_PROBE_PREFIX) and _pid_and_random(name[len(DOCTOR_PROBE_PREFIX):], optional=False)
