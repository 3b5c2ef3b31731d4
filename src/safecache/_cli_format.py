"""What the maintenance commands print for people: ``info``'s table and a report's summary.

``--json`` prints the documents themselves; this module only turns them into
text.  Sizes in binary units (:func:`._units.format_size`), counts with
thousands separators.
"""

from __future__ import annotations

import time

from ._units import format_ago, format_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .maintenance import Report

#: Text output lists at most this many problems (``--json`` lists them all).
MAX_PROBLEMS_SHOWN = 20


def num(value: object) -> int:
    """``value`` if it is an int (not a bool), else 0: counters read from disk may be anything."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def count(n: int, one: str, many: str) -> str:
    """``count(3, "entry", "entries")`` -> ``"3 entries"``."""
    return f"{n:,} {one if n == 1 else many}"


def unrepaired(problems: list[dict[str, object]]) -> list[dict[str, object]]:
    return [p for p in problems if not p.get("repaired")]


def render_info(data: dict[str, object]) -> str:
    """``safecache info`` as text: the cache, then one row per bucket."""
    size, entries, limit = num(data.get("size")), num(data.get("entries")), data.get("max_size")
    lines = [f"cache:      {data.get('path')} ({data.get('state')})"]
    if data.get("source"):
        lines.append(f"chosen by:  {data['source']}")
    if data.get("reason"):
        lines.append(f"why:        {data['reason']}")
    if isinstance(limit, int) and limit > 0:
        lines.append(f"size:       {format_size(size)} of a {format_size(limit)} limit ({100 * size / limit:.1f} %)")
    else:
        lines.append(f"size:       {format_size(size)} (no limit)")
    lines.append(f"entries:    {entries:,}")
    last = data.get("last_trim")
    if isinstance(last, (int, float)) and not isinstance(last, bool) and last > 0:
        lines.append(f"last trim:  {format_ago(max(0.0, time.time() - float(last)))}")
    elif last:
        lines.append(f"last trim:  {last}")
    else:
        lines.append("last trim:  never")
    buckets = data.get("buckets")
    if not isinstance(buckets, dict) or not buckets:
        lines.append("")
        lines.append("no buckets yet")
        return "\n".join(lines)
    rows = [("BUCKET", "SIZE", "ENTRIES", "HIT RATE", "HITS", "MISSES", "ERRORS")]
    for label in sorted(buckets):
        b = buckets[label] if isinstance(buckets[label], dict) else {}
        rate = b.get("hit_rate")
        hits, misses = num(b.get("hits")), num(b.get("misses"))
        if not isinstance(rate, (int, float)) or isinstance(rate, bool):
            rate = hits / (hits + misses) if hits + misses else None
        errors = b.get("errors") if isinstance(b.get("errors"), dict) else {}
        assert isinstance(errors, dict)
        error_text = ", ".join(f"{cause}: {n}" for cause, n in sorted(errors.items(), key=lambda kv: (-num(kv[1]), kv[0]))
                               if num(n)) or "-"
        rows.append((
            str(label), format_size(num(b.get("size"))), f"{num(b.get('entries')):,}",
            "-" if rate is None else f"{100 * float(rate):.1f} %", f"{hits:,}", f"{misses:,}", error_text,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines.append("")
    for row in rows:
        cells = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join(cells) + "  " + row[-1])
    remote = [(label, buckets[label]) for label in sorted(buckets) if isinstance(buckets[label], dict)
              and any(num(buckets[label].get(f)) for f in ("remote_hits", "remote_misses", "remote_uploads", "remote_dropped"))]
    if remote:  # the remote tier (docs/remote.md), where one answered or was written
        lines.append("")
        for label, b in remote:
            lines.append(
                f"remote {label}: {num(b.get('remote_hits')):,} hits, {num(b.get('remote_misses')):,} misses, "
                f"{num(b.get('remote_uploads')):,} uploads ({num(b.get('remote_dropped')):,} dropped), "
                f"{format_size(num(b.get('remote_bytes_read')))} read, {format_size(num(b.get('remote_bytes_written')))} "
                f"written, {num(b.get('remote_ms')) / 1000:.1f} s waiting"
            )
    return "\n".join(lines)


def summary(command: str, report: Report, *, repair: bool = False) -> str:
    """A maintenance report (prune, clean, verify) as text: what was removed,
    what was kept and why, the first problems, what was skipped."""
    lines = []
    removed = []
    if report.removed_entries:
        removed.append(count(report.removed_entries, "entry", "entries"))
    if report.removed_trees:
        removed.append(count(report.removed_trees, "tree", "trees"))
    if report.removed_temp:
        removed.append(count(report.removed_temp, "leftover", "leftovers") + " of dead processes")
    if removed:
        lines.append(f"removed {', '.join(removed)}; freed {format_size(report.freed_bytes)}")
    elif command != "verify" and not report.skipped_reason:
        lines.append("nothing to remove")
    if report.kept_in_use:
        lines.append(f"kept {count(report.kept_in_use, 'tree', 'trees')} in use by other processes "
                     "(run again later, or use --force)")
    for problem in report.problems[:MAX_PROBLEMS_SHOWN]:
        what = problem.get("path") or problem.get("bucket") or "?"
        remedy = problem.get("remedy")
        state = " (removed)" if problem.get("repaired") else f" (left: {remedy})" if remedy else ""
        lines.append(f"{problem.get('kind', 'problem')}: {what}: {problem.get('reason', '')}{state}")
    hidden = len(report.problems) - MAX_PROBLEMS_SHOWN
    if hidden > 0:
        lines.append(f"... and {hidden:,} more (--json lists them all)")
    if command == "verify":
        lines.append(_verdict(report.problems, repair))
    if report.skipped_reason:
        lines.append(f"skipped: {report.skipped_reason}")
    return "\n".join(lines)


def _verdict(problems: list[dict[str, object]], repair: bool) -> str:
    """``verify``'s last line: what was found, and what to do about what is left."""
    found = count(len(problems), "problem", "problems")
    left = unrepaired(problems)
    if not problems:
        return "no corruption found"
    if not left:
        return f"{found} found, all repaired"
    if repair:
        return f"{found} found; {len(left):,} left (each line above says why, and what to do)"
    fixable = [p for p in left if not p.get("remedy")]
    if len(fixable) == len(left):
        return f"{found} found: run `verify --repair` to remove them"
    if fixable:
        return f"{found} found: `verify --repair` removes {len(fixable):,} of them; each other line says what to do"
    return f"{found} found: each line above says what to do (`verify --repair` does not remove them)"
