"""Gate thresholds from files and overrides; the report's JSON schema and markdown."""

from __future__ import annotations

import json

import pytest

from vitedit_ops.errors import InvalidInputError
from vitedit_ops.gate import CheckResult, GateConfig, GateReport, report_schema, validate_report


def test_defaults_are_the_documented_policy():
    config = GateConfig()
    assert config.to_dict() == {
        "reliability_min": 1.0, "generalization_min": 0.5, "locality_min": 0.99,
        "sensitive_min": 0.90, "retention_min": 0.98, "accuracy_drop_max": 0.5,
        "norm_growth_max": 3.0, "onnx_max_abs_diff": 1e-4, "onnx_top1_agreement_min": 1.0}


@pytest.mark.parametrize("name, text", [
    ("gate.toml", "[gate]\nlocality_min = 0.95\nnorm_growth_max = 1.2\n"),
    ("gate.json", '{"locality_min": 0.95, "norm_growth_max": 1.2}'),
    ("gate.yaml", "gate:\n  locality_min: 0.95\n  norm_growth_max: 1.2\n"),
])
def test_config_files_then_overrides(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    config = GateConfig.load(path, ["norm_growth_max=1.1", "retention_min = 1"])
    assert (config.locality_min, config.norm_growth_max, config.retention_min) == (0.95, 1.1, 1.0)
    assert config.sensitive_min == 0.90  # untouched defaults stay


@pytest.mark.parametrize("make, message", [
    (lambda p: GateConfig.load(p.with_name("missing.toml")), "unreadable"),
    (lambda p: GateConfig.load(p.with_name("gate.ini")), "use .toml"),
    (lambda p: GateConfig.from_mapping({"localty_min": 0.9}), "unknown gate setting"),
    (lambda p: GateConfig().with_overrides(["locality_min"]), "expected NAME=VALUE"),
    (lambda p: GateConfig().with_overrides(["locality_min=high"]), "not a number"),
    (lambda p: GateConfig(locality_min=1.5), r"share in \[0, 1\]"),
    (lambda p: GateConfig(norm_growth_max=0.9), "ratio >= 1"),
    (lambda p: GateConfig(onnx_max_abs_diff=float("nan")), "finite number"),
])
def test_bad_settings_are_refused_with_a_reason(tmp_path, make, message):
    (tmp_path / "gate.ini").write_text("x")
    with pytest.raises(InvalidInputError, match=message):
        make(tmp_path / "gate.toml")


def _report(*checks: CheckResult) -> GateReport:
    return GateReport(list(checks), "a" * 64, "b" * 64, "c" * 64, "2026-11-24T00:00:00+00:00")


def test_report_roundtrips_through_schema_valid_json():
    report = _report(
        CheckResult.evaluate("locality", 0.995, 0.99, ">=", images=300),
        CheckResult.evaluate("onnx_max_abs_diff", float("inf"), 1e-4, "<="),
        CheckResult.failed_to_run("reliability", 1.0, ">=", "no edit images"),
        CheckResult("retention", None, 0.98, ">=", True, details={"note": "nothing yet"}))
    report.checks[0].details["drift"] = float("nan")
    data = json.loads(report.to_json())
    validate_report(data)
    assert data["passed"] is False and data["checks"][0]["details"]["drift"] == "nan"
    assert data["checks"][1]["value"] is None and "inf" in data["checks"][1]["error"]
    again = GateReport.from_json(report.to_json())
    assert again.failed_checks == ["onnx_max_abs_diff", "reliability"]
    markdown = again.to_markdown()
    assert "FAILED (onnx_max_abs_diff, reliability)" in markdown
    assert "**could not run**: no edit images" in markdown and "pass (nothing yet)" in markdown
    assert report_schema()["properties"]["format"]["const"] == "vitedit-gate-report/1"


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d.pop("suite_hash"), "'suite_hash' is a required property"),
    (lambda d: d["checks"][0].update(value="0.99"), "checks/0/value"),
    (lambda d: d["checks"][0].update(error="boom"), "checks/0"),
    (lambda d: d.update(checks=[]), "checks"),
    (lambda d: d.update(base_fingerprint="short"), "base_fingerprint"),
    (lambda d: d.update(passed=False), "checks say True"),
])
def test_reports_that_break_the_schema_are_refused(corrupt, message):
    data = _report(CheckResult.evaluate("locality", 0.995, 0.99, ">=")).to_dict()
    corrupt(data)
    with pytest.raises(InvalidInputError, match=message):
        GateReport.from_dict(data)
