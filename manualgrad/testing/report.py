"""The result of a check and the report of many: :class:`CheckResult`, :class:`Report`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

STATUSES = ("pass", "fail", "skip")


@dataclass
class CheckResult:
    """One check on one case.

    Args:
        name: the check's stable name (one of :data:`manualgrad.testing.CHECK_NAMES`, or a
            check of a caller's own, such as verify's ``numpy``).
        status: ``"pass"``, ``"fail"`` or ``"skip"``.
        message: the measured error, PyTorch's message on a failure, or why it was skipped.
        case: what was checked, when a report holds several cases (e.g. ``"loss sum cpu"``).

    Raises:
        ValueError: a status other than those three.

    Example:
        >>> from manualgrad.testing import CheckResult
        >>> CheckResult("values", "pass", "output: max abs 0.0e+00, rel 0.0e+00")
        CheckResult(name='values', status='pass', message='output: max abs 0.0e+00, rel 0.0e+00', case='')
    """

    name: str
    status: str
    message: str = ""
    case: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


@dataclass
class Report:
    """The results of :func:`manualgrad.testing.check_function` (or of ``verify``).

    ``passed`` is True when no result failed (skips do not fail a report). ``str(report)`` is
    a table, one line per result; :meth:`raise_if_failed` raises ``AssertionError`` with it.

    Args:
        results: the results, in the order they are printed.
        title: the table's first line.

    Example:
        >>> from manualgrad.testing import CheckResult, Report
        >>> report = Report([CheckResult("values", "pass", "max abs 0.0e+00"),
        ...                  CheckResult("cuda", "skip", "no CUDA device")], title="my function")
        >>> report.passed, report.summary()
        (True, '1 passed, 0 failed, 1 skipped')
        >>> print(report)
        my function
        check   status  message
        -----------------------
        values  PASS    max abs 0.0e+00
        cuda    SKIP    no CUDA device
        PASSED: 1 passed, 0 failed, 1 skipped
        >>> report.raise_if_failed()  # nothing happens: no check failed
    """

    results: list[CheckResult] = field(default_factory=list)
    title: str = ""

    @property
    def passed(self) -> bool:
        """True when no result failed (results that were skipped do not count)."""
        return not any(r.status == "fail" for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        """The results that failed, in order."""
        return [r for r in self.results if r.status == "fail"]

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.results)

    def extend(self, results: Iterable[CheckResult]) -> None:
        """Append ``results`` (e.g. those of :func:`~manualgrad.testing.run_checks` on another case)."""
        self.results.extend(results)

    def status_of(self, name: str, case: str | None = None) -> str:
        """The status of check ``name`` (in ``case``, if given) over all its results.

        Args:
            name: a check's name.
            case: only the results of this case (default: every case).

        Returns:
            ``"fail"`` if any of them failed, else ``"pass"`` if any passed, else ``"skip"``.

        Raises:
            KeyError: no result of that name (in that case).
        """
        statuses = {r.status for r in self.results if r.name == name and (case is None or r.case == case)}
        if not statuses:
            raise KeyError(f"no result named {name!r}" + (f" in case {case!r}" if case is not None else ""))
        return next(s for s in ("fail", "pass", "skip") if s in statuses)

    def summary(self) -> str:
        """``"3 passed, 0 failed, 1 skipped"``."""
        counts = {s: sum(r.status == s for r in self.results) for s in STATUSES}
        return f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"

    def __str__(self) -> str:
        lines = [self.title] if self.title else []
        lines += format_results(self.results)
        lines.append(("PASSED: " if self.passed else "FAILED: ") + self.summary())
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise ``AssertionError`` with the table if any check failed (for use in pytest).

        Raises:
            AssertionError: a check failed; the message is ``str(self)``.
        """
        if not self.passed:
            raise AssertionError("\n" + str(self))

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable dict: title, passed, summary and every result as a dict."""
        return {
            "title": self.title,
            "passed": self.passed,
            "summary": self.summary(),
            "results": [dataclasses.asdict(r) for r in self.results],
        }


def format_results(results: list[CheckResult]) -> list[str]:
    """Table lines: (case,) check, status, message; long messages wrap under the message column."""
    if not results:
        return []
    with_case = any(r.case for r in results)
    case_width = max((len(r.case) for r in results), default=0) if with_case else 0
    name_width = max(len("check"), *(len(r.name) for r in results))
    prefix = (f"{'case':<{case_width}}  " if with_case else "") + f"{'check':<{name_width}}  status  "
    lines = [prefix + "message", "-" * (len(prefix) + 7)]
    for r in results:
        head = (f"{r.case:<{case_width}}  " if with_case else "") + f"{r.name:<{name_width}}  {r.status.upper():<6}  "
        message_lines = r.message.splitlines() or [""]
        lines.append(head + message_lines[0])
        lines += [" " * len(head) + m for m in message_lines[1:]]
    return lines
