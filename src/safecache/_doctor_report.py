"""What ``safecache doctor`` reports: findings, the report, its JSON and its text.

The bottom of the doctor modules: every check builds :class:`Finding`
objects; :func:`._doctor.diagnose` gathers them into a :class:`Report`.
docs/doctor.md documents the JSON schema.
"""

from __future__ import annotations

OK = "ok"
WARN = "warn"
FAIL = "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}

#: Version of the JSON document ``Report.as_dict`` returns.  Bumped only for
#: an incompatible change; new fields may appear without a bump.
SCHEMA = 1


class Finding:
    """One check: ``name``, ``status`` (ok, warn, fail), what was seen
    (``detail``), unless ok what to do (``remedy``), and machine-readable
    facts (``data``, a JSON-serialisable dict, empty for most checks)."""

    __slots__ = ("name", "status", "detail", "remedy", "data")

    def __init__(
        self, name: str, status: str, detail: str, remedy: str = "", data: dict[str, object] | None = None
    ) -> None:
        self.name = name
        self.status = status
        self.detail = detail
        self.remedy = remedy
        self.data: dict[str, object] = data if data is not None else {}

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "remedy": self.remedy, "data": self.data}

    def __repr__(self) -> str:
        return f"Finding({self.name!r}, {self.status!r}, {self.detail!r})"


class Report:
    """The result of :func:`diagnose`: the location, its state, and the findings in order."""

    def __init__(self, path: str | None, source: str, findings: list[Finding], state: str = "") -> None:
        self.path = path
        self.source = source
        self.findings = findings
        self.state = state

    @property
    def healthy(self) -> bool:
        """False exactly when some finding failed."""
        return all(f.status != FAIL for f in self.findings)

    @property
    def status(self) -> str:
        """The worst status among the findings."""
        return max((f.status for f in self.findings), key=_RANK.__getitem__, default=OK)

    def finding(self, name: str) -> Finding | None:
        """The finding called ``name``, if that check ran."""
        for f in self.findings:
            if f.name == name:
                return f
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "path": self.path,
            "source": self.source,
            "state": self.state,
            "healthy": self.healthy,
            "status": self.status,
            "findings": [f.as_dict() for f in self.findings],
        }


# -- text -------------------------------------------------------------------------------------
_COLORS = {OK: "\033[32m", WARN: "\033[33m", FAIL: "\033[1;31m"}
_RESET = "\033[0m"


def render(report: Report, *, color: bool = False) -> str:
    """The report as text; ``color`` adds ANSI colours to the status marks."""
    marks = {OK: "ok  ", WARN: "warn", FAIL: "FAIL"}

    def paint(status: str, text: str) -> str:
        return f"{_COLORS[status]}{text}{_RESET}" if color else text

    lines = [f"cache: {report.path or '(disabled)'}", f"chosen by: {report.source}", ""]
    for f in report.findings:
        lines.append(f"[{paint(f.status, marks[f.status])}] {f.name}: {f.detail}")
        if f.remedy and f.status != OK:
            lines.append(f"       fix: {f.remedy}")
    lines.append("")
    lines.append(paint(OK, "healthy") if report.healthy else paint(FAIL, "problems found"))
    return "\n".join(lines)
