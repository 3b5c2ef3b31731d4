"""safecache's performance suite: one module per section, run by ``bench/run.py``.

Sections (each module has ``run(ctx) -> dict``, ``targets(result) -> list``
and ``markdown(result, ctx) -> str``; the report in ``report.py`` assembles
them with the notes in ``bench/notes/``):

1. ``workload``   diskcache's own benchmark (tests/benchmark_core.py), 1 and 8 processes
2. ``floor``      get/put of 1 KiB, 64 KiB, 1 MiB against the bare system calls
3. ``large``      streaming put/get of 100 MiB against cp and cat; peak memory
4. ``trees``      placing 10,000 small files by each link mode against cp -r
5. ``scale``      get/put with 1,000 vs 1,000,000 entries; info, trim and clean at that scale
6. ``startup``    import and ``safecache dir`` cold start
7. ``contention`` throughput of 1, 2, 4, 8 processes on the same and on disjoint keys
8. ``memoize``    a memoized function's warm call against a bare get of the same value
9. ``entries``    the writer against put, get_meta against get, set_meta against a put
10. ``remote``    a remote hit against the bare client, put with upload, a CI runner's fresh cache against a tar restore
"""

SECTIONS = ("workload", "floor", "large", "trees", "scale", "startup", "contention", "memoize", "entries", "remote")

#: The order they run in: the sections that delete many files (trees, scale)
#: run last, because on an ext4 without a journal every deletion makes file
#: creation slower for minutes afterwards (trees.ext4_journal), which
#: would leak into the sections measured after them.
RUN_ORDER = ("workload", "floor", "large", "startup", "contention", "memoize", "entries", "remote", "trees", "scale")
