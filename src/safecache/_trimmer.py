"""Maintenance: the walk ``trim`` and ``prune`` share, which removes by age,
by kind (``prune --ci``) and least recently used first, and reclaims what
dead processes left behind.

Least recently used is by mtime, which a hit refreshes at most once an hour
(Go); the order is kept in a bounded histogram of use times rather than a
list of every entry, so memory stays small whatever the cache holds.
"""

from __future__ import annotations

import os
import stat as _stat
import time

from . import _format, _layout
from ._examine import Entry, Folder, header_of, read_pointer
from ._format import Invalid
from ._reclaim import discard_lock, drop_tree, purge, staging_in_use
from ._walk import Dir, Run, TreeUnit, plan, present, shards, walk_shards

#: A trim for size goes down to this share of the limit (ccache), so a full
#: cache is not trimmed again by the very next write.
TRIM_TO = 0.9
#: The LRU histogram keeps at most this many time slots (see _Histogram).
_HIST_SLOTS = 1 << 16


# -- the LRU cutoff ---------------------------------------------------------------------------
class _Histogram:
    """Bytes per time slot, to find the least-recently-used cutoff without
    keeping every entry in memory.

    Slots start one second wide; whenever there are more than
    :data:`_HIST_SLOTS` of them, they are merged four to one.  Memory is
    therefore bounded (a few MB) whatever the cache holds, and the order is
    exact LRU up to the slot width (one second for caches whose entries
    were used in fewer than 65,536 distinct seconds, coarser beyond).
    """

    def __init__(self) -> None:
        self.width = 1
        self.slots: dict[int, int] = {}
        self.total = 0

    def slot(self, mtime: float) -> int:
        return int(mtime // self.width)

    def add(self, mtime: float, size: int) -> None:
        key = self.slot(mtime)
        self.slots[key] = self.slots.get(key, 0) + size
        self.total += size
        if len(self.slots) > _HIST_SLOTS:
            merged: dict[int, int] = {}
            for key, value in self.slots.items():
                merged[key // 4] = merged.get(key // 4, 0) + value
            self.slots = merged
            self.width *= 4

    def cutoff(self, need: int) -> tuple[int, int]:
        """``(T, before)``: removing everything in slots below ``T`` frees
        ``before`` < ``need`` bytes, and removing slot ``T`` too frees at
        least ``need`` (``T`` is the newest slot when even everything is not
        enough)."""
        before = 0
        last = 0
        for key in sorted(self.slots):
            last = key
            if before + self.slots[key] >= need:
                return key, before
            before += self.slots[key]
        return last, before - self.slots.get(last, 0)


# -- trimming -----------------------------------------------------------------------------------
class Trimmer:
    """The walk shared by ``trim`` and ``prune``.

    Pass 1 visits every shard of every bucket once: it removes leftovers,
    entries and trees past ``max_age`` and (``ci``) everything fetched, and
    records what stays in a histogram of use times.  If the cache is then
    over ``max_size``, pass 2 walks again and removes, oldest first, until
    the cache is under ``TRIM_TO`` of the limit; it re-reads each mtime, so
    an entry used while the trim ran survives.  Every directory is walked as
    a :class:`~._walk.Folder` (relative to its descriptor on POSIX).
    """

    def __init__(
        self,
        run: Run,
        *,
        max_age: float | None,
        max_size: int | None,
        ci: bool = False,
        deadline: float | None = None,
        force: bool = False,
    ) -> None:
        self.run = run
        self.max_age = max_age
        self.max_size = max_size
        self.ci = ci
        self.deadline = deadline
        self.force = force
        self.hist = _Histogram()
        self.kept: set[tuple[str, str]] = set()
        # Pass 2's cutoff slot, and how many bytes of that slot still go.
        self.cutoff = 0
        self.budget = 0

    def wait(self) -> float:
        if self.deadline is None or self.force:
            return 0.0
        return max(0.0, self.deadline - time.monotonic())

    def expired(self, mtime: float) -> bool:
        return self.max_age is not None and self.run.now - mtime > self.max_age

    def trim(self, dirs: list[Dir]) -> None:
        run = self.run
        for b in dirs:
            plan(run, b)
        run.total = sum(len(b.shards) + len(b.tree_shards) + 1 for b in dirs) + 1
        for b in dirs:
            with run.opened(b.parts, b.label) as vf:
                if vf is not None:
                    self.pass1(b, vf)
            run.tick()
        self.root_leftovers()
        total = sum(b.size for b in dirs)
        if self.max_size is None or total <= self.max_size or not self.hist.slots:
            return
        need = total - int(self.max_size * TRIM_TO)
        self.cutoff, before = self.hist.cutoff(need)
        run.total += sum(len(b.shards) + 1 for b in dirs)
        self.budget = need - before
        for b in dirs:
            with run.opened(b.parts, b.label) as vf:
                if vf is not None:
                    self.pass2(b, vf)
            run.tick()

    def objects_folder(self, b: Dir, vf: Folder) -> tuple[Folder | None, bool]:
        """``tree-objects/`` of ``vf`` (None if there is none), and whether
        that is known: when it cannot be told, the bucket's references are
        unknown (no pointer is then taken for dangling, no tree for
        unreferenced)."""
        try:
            return vf.child(_layout.TREE_OBJECTS), True
        except (FileNotFoundError, NotADirectoryError):
            return None, True
        except OSError as exc:
            self.run.failed(exc, vf.join(_layout.TREE_OBJECTS), b.label)
            b.unknown_refs = True
            return None, False

    # -- pass 1 ------------------------------------------------------------------
    def pass1(self, b: Dir, vf: Folder) -> None:
        run = self.run
        for xx, shard, entry in walk_shards(run, b, vf):
            if _layout.is_digest(entry.name):
                if _layout.shard_of(entry.name) == xx:  # a misplaced one no reader finds; verify reports it
                    self.entry(shard, entry, b)
            elif _layout.is_temp(entry.name):
                self.leftover_file(shard, entry, b)
            elif _layout.is_meta(entry.name):
                self.sidecar(shard, entry, b)
        objs, known = self.objects_folder(b, vf)
        try:
            for xx, shard, entry in walk_shards(run, b, vf, trees=True):
                if _layout.is_digest(entry.name) and _layout.shard_of(entry.name) == xx:
                    self.pointer(shard, entry, b, objs, known)
                elif _layout.is_temp(entry.name):
                    self.leftover_file(shard, entry, b)
            if objs is not None:
                self.objects(b, vf, objs)
        finally:
            if objs is not None:
                objs.close()

    def entry(self, shard: Folder, entry: Entry, b: Dir) -> None:
        """An entry: removed if expired (or fetched, for ``ci``), else counted."""
        run = self.run
        report = run.report
        st = run.lstat(entry, b.label)
        if st is None or not _stat.S_ISREG(st.st_mode):
            return
        # Entries past their ttl go first, whatever the limits (one header
        # read per entry: the expiry is in the file, not in its metadata).
        header = header_of(shard, entry.name)
        if (
            self.expired(st.st_mtime)
            or (header is not None and header.expired(time.time_ns()))
            or (self.ci and header is not None and header.kind == _format.KIND_FETCHED)
        ):
            if run.remove(shard, entry.name, b.label):
                run.remove(shard, _layout.meta_path(entry.name), b.label)  # its sidecar, if any
                report.removed_entries += 1
                report.freed_bytes += st.st_size
                return
            if not present(shard, entry.name):
                return
        b.size += st.st_size
        b.entries += 1
        self.hist.add(st.st_mtime, st.st_size)

    def sidecar(self, shard: Folder, entry: Entry, b: Dir) -> None:
        """A set_meta sidecar whose entry is gone: removed (readers ignore it
        anyway; a stale one beside a live entry is removed by the next put)."""
        if not present(shard, entry.name[: -len(_layout.META_SUFFIX)]):
            self.run.remove(shard, entry.name, b.label)

    def leftover_file(self, folder: Folder, entry: Entry, b: Dir | None) -> None:
        """A temp file: removed once older than LEFTOVER_AGE (a live
        writer's is younger)."""
        run = self.run
        label = b.label if b is not None else None
        st = run.lstat(entry, label)
        if st is None or _stat.S_ISDIR(st.st_mode) or not run.old(st.st_mtime):
            return
        if run.remove(folder, entry.name, label):
            run.report.removed_temp += 1
            run.report.freed_bytes += st.st_size

    def pointer(self, shard: Folder, entry: Entry, b: Dir, objs: Folder | None, known: bool) -> None:
        run = self.run
        report = run.report
        digest = entry.name
        b.pointers.add(digest)
        st = run.lstat(entry, b.label)
        if st is None or not _stat.S_ISREG(st.st_mode):
            return  # a FIFO, a device, a symlink: no reader uses it (verify reports it)
        judged: list[os.stat_result] = []
        try:
            loaded = read_pointer(shard, digest, judged)
        except Invalid as invalid:
            if invalid.reason == "unsupported-version":
                b.unknown_refs = True  # a newer safecache's tree: we cannot know what it references
                b.size += st.st_size
                return
            loaded = None
        except ValueError:
            loaded = None
        except OSError as exc:
            b.unknown_refs = True
            run.failed(exc, entry.path, b.label)
            return
        else:
            if loaded is None:
                return  # gone meanwhile
        if loaded is not None and (present(objs, loaded[1].tree_id) if objs is not None else not known):
            header, manifest, _st = loaded
            unit = TreeUnit(entry.path, manifest.tree_id, st.st_mtime, st.st_size + manifest.size)
            self.tree(unit, b, fetched=header.kind == _format.KIND_FETCHED, guard=(shard,) + ((objs,) if objs else ()))
            return
        # A pointer no reader would use (they remove it too), or one whose
        # tree is gone (a remover deletes the pointer first, so this is a
        # leftover, not a commit in progress).  Removed only if it is still
        # the file judged: a committer may have published a good one since.
        if judged and run.remove(shard, digest, b.label, same_as=judged[0]):
            report.removed_entries += 1
            report.freed_bytes += st.st_size

    def tree(self, unit: TreeUnit, b: Dir, *, fetched: bool, guard: tuple[Folder, ...]) -> None:
        """A referenced tree: removed if expired (or fetched, for ``ci``),
        else counted, pointer and files, as one unit."""
        b.referenced.add(unit.tree_id)
        if self.expired(unit.mtime) or (self.ci and fetched):
            self.expire_tree(unit, b, guard)
            return
        b.size += unit.size
        b.units.append(unit)
        self.hist.add(unit.mtime, unit.size)

    def expire_tree(self, unit: TreeUnit, b: Dir, guard: tuple[Folder, ...]) -> None:
        """Remove a tree pass 1 does not keep; one held by a process stays."""
        report = self.run.report
        outcome = drop_tree(self.run, b, unit.tree_id, unit.pointer, wait=self.wait(), force=self.force, guard=guard)
        if outcome in ("removed", "gone"):
            b.referenced.discard(unit.tree_id)
            report.removed_trees += outcome == "removed"
            report.freed_bytes += unit.size if outcome == "removed" else 0
            return
        if outcome == "held":
            report.kept_in_use += 1
            self.kept.add((b.label, unit.tree_id))
        b.size += unit.size

    def objects(self, b: Dir, vf: Folder, objs: Folder) -> None:
        """``tree-objects/``: staging trees and half-removed trees left by
        dead processes, and trees no pointer references."""
        run = self.run
        candidates: list[Entry] = []
        for entry in run.scan(objs, b.label):
            name = entry.name
            if not entry.is_dir():
                continue
            if _layout.is_tree_id(name):
                if name not in b.referenced:
                    candidates.append(entry)
            elif _layout.is_staging(name):
                self.staging(objs, entry, b)
            elif _layout.is_doomed(name):
                self.leftover_dir(objs, entry, b)
        if candidates and not b.unknown_refs:
            self.rescan_pointers(b, vf)
        for entry in candidates:
            self.unreferenced(objs, entry, b)
        self.orphan_locks(b, objs)

    def staging(self, objs: Folder, entry: Entry, b: Dir) -> None:
        """A staging tree: removed once old, unless its builder pins it."""
        run = self.run
        tree_id = _layout.tree_id_of(entry.name)
        newest, size = run.survey(objs, entry.name)
        if run.old(newest) and not staging_in_use(b, tree_id) and run.rmtree(objs, entry.name, b.label):
            run.report.removed_temp += 1
            run.report.freed_bytes += size
            discard_lock(b.object_lock(tree_id))

    def leftover_dir(self, objs: Folder, entry: Entry, b: Dir) -> None:
        """A half-removed tree (``<id>.del-<r>``): its remover is done with it."""
        run = self.run
        _newest, size = run.survey(objs, entry.name)
        if run.rmtree(objs, entry.name, b.label):
            run.report.removed_temp += 1
            run.report.freed_bytes += size

    def unreferenced(self, objs: Folder, entry: Entry, b: Dir) -> None:
        """A tree no pointer references: removed once old (a commit renames
        its object into place just before publishing its pointer)."""
        run = self.run
        report = run.report
        tree_id = entry.name
        newest, size = run.survey(objs, tree_id)
        if tree_id in b.referenced or b.unknown_refs or not run.old(newest):
            b.size += size
            return
        outcome = drop_tree(run, b, tree_id, None, wait=self.wait(), force=self.force, guard=(objs,))
        if outcome == "removed":
            report.removed_trees += 1
            report.freed_bytes += size
        elif outcome == "held":
            report.kept_in_use += 1
            b.size += size
        elif outcome == "failed":
            b.size += size

    def rescan_pointers(self, b: Dir, vf: Folder) -> None:
        """Read pointers published since pass 1 listed them, so a tree
        committed meanwhile is not taken for unreferenced.  Only regular
        files are read (a FIFO there reads as absent, never blocks)."""
        run = self.run
        trees = run.enter(vf, _layout.TREES, b.label)
        if trees is None:
            return
        with trees:
            for xx in shards(run, trees, b.label):
                shard = run.enter(trees, xx, b.label)
                if shard is None:
                    continue
                with shard:
                    for child in run.scan(shard, b.label):
                        if _layout.is_digest(child.name) and child.name not in b.pointers and child.is_file():
                            self.rescanned(shard, child, b)

    def rescanned(self, shard: Folder, child: Entry, b: Dir) -> None:
        b.pointers.add(child.name)
        try:
            loaded = read_pointer(shard, child.name)
        except Invalid as invalid:
            b.unknown_refs |= invalid.reason == "unsupported-version"
            return
        except ValueError:
            return
        except OSError:
            b.unknown_refs = True
            return
        if loaded is not None:
            b.referenced.add(loaded[1].tree_id)

    def orphan_locks(self, b: Dir, objs: Folder) -> None:
        """Delete lock files of tree objects that no longer exist (older
        than LEFTOVER_AGE; see ``_walk``'s docstring for why this is safe)."""
        run = self.run
        with run.opened((*b.lock_parts, _layout.TREE_OBJECTS)) as locks:
            if locks is None:
                return
            for entry in run.scan(locks):
                tree_id = _layout.lock_tree_id(entry.name)
                if tree_id is None:
                    continue
                st = run.lstat(entry)
                if st is None or not run.old(st.st_mtime) or not _stat.S_ISREG(st.st_mode):
                    continue
                # Staging first, then the object: a commit renames the one into
                # the other, so at every moment one of the two names exists.
                if present(objs, tree_id + _layout.STAGING_SUFFIX) or present(objs, tree_id):
                    continue
                try:  # best effort: on Windows a holder's handle keeps it
                    locks.unlink(entry.name, budget=0.0)
                except OSError:
                    pass

    def root_leftovers(self) -> None:
        """Temp files of markers and counters, and abandoned trash."""
        run = self.run
        with run.opened() as root:
            if root is not None:
                for entry in run.scan(root):
                    if _layout.is_temp(entry.name):
                        self.leftover_file(root, entry, None)
                    elif _layout.is_trash(entry.name) and entry.is_dir():
                        newest, _size = run.survey(root, entry.name)
                        if run.old(newest):
                            purge(run, root, entry.name, None)  # a killed clean's
                            run.report.removed_temp += not present(root, entry.name)
                stats = run.enter(root, _layout.STATS)
                if stats is not None:
                    with stats:
                        for entry in run.scan(stats):
                            if _layout.is_temp(entry.name):
                                self.leftover_file(stats, entry, None)
        run.tick()

    # -- pass 2 ------------------------------------------------------------------
    def least_recent(self, mtime: float, size: int) -> bool:
        """Whether pass 2 removes what was last used at ``mtime``: everything
        used before the cutoff slot goes; of the cutoff slot itself, only
        what is still needed (in walk order)."""
        slot = self.hist.slot(mtime)
        if slot < self.cutoff:
            return True
        if slot == self.cutoff and self.budget > 0:
            self.budget -= size
            return True
        return False  # newer, or used since pass 1

    def pass2(self, b: Dir, vf: Folder) -> None:
        run = self.run
        report = run.report
        self.pass2_trees(b, vf)
        for xx, shard, entry in walk_shards(run, b, vf):
            if not (_layout.is_digest(entry.name) and _layout.shard_of(entry.name) == xx):
                continue
            st = run.lstat(entry, b.label)
            if st is None or not _stat.S_ISREG(st.st_mode) or not self.least_recent(st.st_mtime, st.st_size):
                continue
            if run.remove(shard, entry.name, b.label):
                report.removed_entries += 1
                report.freed_bytes += st.st_size
                b.size -= st.st_size
                b.entries -= 1

    def pass2_trees(self, b: Dir, vf: Folder) -> None:
        if not b.units:
            return
        run = self.run
        report = run.report
        objs, _known = self.objects_folder(b, vf)
        trees = run.enter(vf, _layout.TREES, b.label)
        try:
            if objs is None or trees is None:
                return
            for unit in sorted(b.units, key=lambda u: u.mtime):
                name = os.path.basename(unit.pointer)
                shard = run.enter(trees, _layout.shard_of(name), b.label)
                if shard is None:
                    continue
                with shard:
                    try:
                        mtime = shard.lstat(name).st_mtime
                    except OSError:
                        continue
                    if not self.least_recent(mtime, unit.size):
                        continue
                    guard = (shard, objs)
                    outcome = drop_tree(run, b, unit.tree_id, unit.pointer, wait=self.wait(), force=self.force, guard=guard)
                if outcome == "removed":
                    report.removed_trees += 1
                    report.freed_bytes += unit.size
                    b.size -= unit.size
                elif outcome == "held":
                    report.kept_in_use += (b.label, unit.tree_id) not in self.kept
                    self.kept.add((b.label, unit.tree_id))
        finally:
            for folder in (objs, trees):
                if folder is not None:
                    folder.close()
