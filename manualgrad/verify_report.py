"""What ``verify`` reports and how it prints: :class:`VerifyReport`, :func:`format_report`,
:func:`progress_printer` (all three are also importable from :mod:`manualgrad.verify`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from .testing import CheckResult, Report
from .testing.report import format_results

__all__ = ["VerifyReport", "format_report", "format_section", "progress_printer"]


@dataclass
class VerifyReport(Report):
    """A :class:`~manualgrad.testing.Report` whose results are grouped in sections, with the
    settings they ran with; what :func:`manualgrad.verify.verify` returns.

    ``results`` holds every section's results in order, so ``passed``, ``summary()``,
    ``raise_if_failed()`` and ``str(report)`` work as for any report;
    :func:`format_report` prints it section by section.

    Args:
        results: every result, in order (filled by :meth:`add_section`).
        title: the report's first line.
        settings: what the run used: torch version, devices, dtypes, batch, hidden, seed.
        sections: ``(title, results, seconds)`` per section, in the order they ran.

    Example:
        >>> from manualgrad.testing import CheckResult
        >>> from manualgrad.verify import VerifyReport
        >>> report = VerifyReport(title="by hand", settings={"seed": 0})
        >>> report.add_section("first", [CheckResult("values", "pass", "ok", "probs cpu")], 0.5)
        >>> report.add_section("second", [CheckResult("cuda", "skip", "no CUDA device", "probs")], 0.0)
        >>> report.passed, report.summary(), [title for title, _, _ in report.sections]
        (True, '1 passed, 0 failed, 1 skipped', ['first', 'second'])
        >>> report.to_dict()["sections"][0]
        {'title': 'first', 'seconds': 0.5, 'count': 1}
    """

    settings: dict[str, object] = field(default_factory=dict)
    sections: list[tuple[str, list[CheckResult], float]] = field(default_factory=list)

    def add_section(self, title: str, results: list[CheckResult], seconds: float) -> None:
        """Append a section: its results go to ``results`` as well."""
        self.sections.append((title, results, seconds))
        self.results.extend(results)

    def to_dict(self) -> dict[str, object]:
        """:meth:`Report.to_dict <manualgrad.testing.Report.to_dict>` plus settings and sections."""
        data = super().to_dict()
        data["settings"] = self.settings
        data["sections"] = [{"title": t, "seconds": round(s, 2), "count": len(r)} for t, r, s in self.sections]
        return data


def format_section(title: str, results: list[CheckResult], seconds: float | None = None) -> str:
    """A section's title line with its summary, then its results' table, indented."""
    summary = Report(results).summary() + (f", {seconds:.1f} s" if seconds is not None else "")
    return "\n".join([f"{title}: {summary}", *("  " + line for line in format_results(results)), ""])


def format_report(report: VerifyReport) -> str:
    """The whole report, section by section (what ``python -m manualgrad verify`` prints as it goes).

    Args:
        report: what :func:`manualgrad.verify.verify` returned.

    Returns:
        The text: the title, each section's summary line and table, and a last ``verify:`` line.

    Example:
        >>> from manualgrad.testing import CheckResult
        >>> from manualgrad.verify import VerifyReport, format_report
        >>> report = VerifyReport(title="manualgrad verify: by hand")
        >>> report.add_section("first", [CheckResult("values", "pass", "max abs 0.0e+00", "probs")], 1.25)
        >>> print(format_report(report))
        manualgrad verify: by hand
        <BLANKLINE>
        first: 1 passed, 0 failed, 0 skipped, 1.2 s
          case   check   status  message
          ------------------------------
          probs  values  PASS    max abs 0.0e+00
        <BLANKLINE>
        verify: 1 passed, 0 failed, 0 skipped
    """
    lines = [report.title, ""]
    lines += [format_section(t, r, s) for t, r, s in report.sections]
    lines.append(f"verify: {report.summary()}")
    return "\n".join(lines)


def progress_printer(tables: bool = True, stream: TextIO | None = None) -> Callable[..., None]:
    """A ``progress`` callback for :func:`manualgrad.verify.verify`, as the command line uses it.

    Each section's table goes to stdout as it finishes (with ``tables``). On a terminal a
    ``[2/6] title ...`` line on ``stream`` shows the section running; in a log (``stream`` not a
    terminal), or without tables, one plain line per finished section goes to ``stream``.

    Args:
        tables: print each section's table on stdout.
        stream: where the progress lines go (default: ``sys.stderr``).

    Returns:
        The callback, ``show(i, n, title, results, seconds)``.

    Example:
        >>> import io
        >>> from manualgrad.testing import CheckResult
        >>> from manualgrad.verify import progress_printer
        >>> log = io.StringIO()
        >>> show = progress_printer(tables=False, stream=log)
        >>> show(1, 2, "values and gradients", None, 0.0)  # a section starts: nothing in a log
        >>> show(1, 2, "values and gradients", [CheckResult("values", "pass")], 2.0)
        >>> print(log.getvalue(), end="")
        [1/2] values and gradients: 1 passed, 0 failed, 0 skipped (2.0 s)
    """
    err = stream or sys.stderr
    terminal = err.isatty()

    def show(i: int, n: int, title: str, results: list[CheckResult] | None, seconds: float) -> None:
        if i == 0:  # the report's title, before the first section
            if tables:
                print(title + "\n", flush=True)
            return
        if results is None:
            if terminal:
                print(f"\r[{i}/{n}] {title} ...", end="", file=err, flush=True)
            return
        if terminal:
            print("\r\033[K", end="", file=err, flush=True)  # erase the running line
        if tables:
            print(format_section(title, results, seconds), flush=True)
        if not terminal or not tables:
            print(f"[{i}/{n}] {title}: {Report(results).summary()} ({seconds:.1f} s)", file=err, flush=True)

    return show
