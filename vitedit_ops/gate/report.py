"""The gate's verdict: every check with its value, threshold and outcome, as JSON and markdown.

A model passes only if every check passed; a check that could not run carries an error and
counts as a failure, never as a skip.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

from ..errors import InvalidInputError

REPORT_FORMAT = "vitedit-gate-report/1"
SCHEMA_FILE = "report.schema.json"
Comparison = Literal[">=", "<=", "=="]


@dataclass
class CheckResult:
    """One gate check; ``value is None`` with ``error`` set means it could not run (= fail)."""

    name: str
    value: float | None
    threshold: float | None
    comparison: Comparison
    passed: bool
    description: str = ""
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def evaluate(cls, name: str, value: float, threshold: float, comparison: Comparison,
                 description: str = "", **details: Any) -> CheckResult:
        """Compare ``value`` to ``threshold``; NaN and infinities never pass."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return cls(name, None, threshold, comparison, False, description,
                       error="value is undefined (empty set or NaN)", details=details)
        if isinstance(value, float) and math.isinf(value):
            return cls(name, None, threshold, comparison, False, description,
                       error=f"value is {value} (non-finite outputs)", details=details)
        ok = {">=": value >= threshold, "<=": value <= threshold,
              "==": value == threshold}[comparison]
        return cls(name, float(value), threshold, comparison, bool(ok), description,
                   details=details)

    @classmethod
    def failed_to_run(cls, name: str, threshold: float | None, comparison: Comparison,
                      error: str, description: str = "") -> CheckResult:
        return cls(name, None, threshold, comparison, False, description, error=error)


@dataclass
class GateReport:
    """All checks of one gate run plus what ties them to models and the suite."""

    checks: list[CheckResult]
    suite_hash: str
    base_fingerprint: str
    candidate_fingerprint: str
    created_at: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (non-finite floats in details become strings) valid for the schema."""
        return _finite({"format": REPORT_FORMAT, "passed": self.passed, **asdict(self)})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateReport:
        """Parse a report, refusing one that breaks the schema or whose verdict was altered."""
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InvalidInputError(f"not a gate report (format {found!r})")
        validate_report(data)
        report = cls(checks=[CheckResult(**c) for c in data["checks"]],
                     suite_hash=data["suite_hash"], base_fingerprint=data["base_fingerprint"],
                     candidate_fingerprint=data["candidate_fingerprint"],
                     created_at=data.get("created_at", ""), metadata=data.get("metadata", {}))
        if report.passed != data["passed"]:
            raise InvalidInputError("gate report says passed="
                                    f"{data['passed']} but its checks say {report.passed}")
        return report

    @classmethod
    def from_json(cls, text: str) -> GateReport:
        return cls.from_dict(json.loads(text))

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED (" + ", ".join(self.failed_checks) + ")"
        lines = [f"### Gate: {verdict}", "",
                 "| check | value | threshold | result |", "|---|---|---|---|"]
        for c in self.checks:
            value = "n/a" if c.value is None else f"{c.value:.4g}"
            threshold = "" if c.threshold is None else f"{c.comparison} {c.threshold:.4g}"
            if c.passed:
                result = "pass" if c.value is not None else f"pass ({c.details.get('note', '')})"
            else:
                result = "**could not run**: " + c.error if c.error else "**fail**"
            lines.append(f"| {c.name} | {value} | {threshold} | {result} |")
        lines += ["", f"suite `{self.suite_hash[:16]}` · base `{self.base_fingerprint[:12]}` · "
                      f"candidate `{self.candidate_fingerprint[:12]}`"]
        return "\n".join(lines) + "\n"


@cache
def report_schema() -> dict[str, Any]:
    """The JSON Schema of :meth:`GateReport.to_dict` (``report.schema.json``)."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text())


def validate_report(data: dict[str, Any]) -> None:
    """Raise :class:`InvalidInputError` naming the first place ``data`` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(report_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(root)"
        raise InvalidInputError(f"gate report breaks its schema at {where}: {error.message}")


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: keep reports parseable by strict readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
