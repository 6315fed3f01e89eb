"""Locality regression suite, gate checks and the GateReport.

>>> suite = build_suite("suites/lineage-1", model, spec, pixels, labels)
>>> report = run_gate(base, candidate, suite, GateConfig.load("gate.toml"), edit_images=...)
>>> report.passed, report.failed_checks
"""

from .config import GateConfig
from .gate import run_gate
from .report import CheckResult, GateReport, report_schema, validate_report
from .suite import (Suite, SuiteError, SuiteIntegrityError, SuiteOverlapError, build_suite,
                    image_hashes, load_suite, suite_versions)

__all__ = ["CheckResult", "GateConfig", "GateReport", "Suite", "SuiteError",
           "SuiteIntegrityError", "SuiteOverlapError", "build_suite", "image_hashes",
           "load_suite", "report_schema", "run_gate", "suite_versions", "validate_report"]
