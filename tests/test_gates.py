"""Quality gates on evaluate: the spec's parsing, each side of a threshold through the CLI, exit 8, JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from conftest import make_lesion_model, run_cli

from softcamify.errors import EXIT_GATE, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, GateFailed, UsageError
from softcamify.evaluation.gates import (
    Gate,
    GateOutcome,
    check_gate_targets,
    junit_xml,
    parse_gates,
    require_gates,
)

# --------------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------------


def test_parse_every_form():
    gates = parse_gates(
        "accuracy=0.95, balanced_accuracy=0.9,activation_precision=0.3,sensitivity[mal, ign]=0.8,"
        "gradcam.pointing_game=0.5,original:gradcam++.insertion_auc=0.1,original.accuracy=0.7,",
        "deletion_auc=0.2",
    )
    assert [(g.name, g.op, g.threshold) for g in gates] == [
        ("accuracy", ">=", 0.95),
        ("balanced_accuracy", ">=", 0.9),
        ("activation_precision", ">=", 0.3),
        ("sensitivity[mal, ign]", ">=", 0.8),
        ("gradcam.pointing_game", ">=", 0.5),
        ("original:gradcam++.insertion_auc", ">=", 0.1),
        ("original.accuracy", ">=", 0.7),
        ("deletion_auc", "<=", 0.2),
    ]
    assert gates[3].cls == "mal, ign" and gates[4].prefix == "gradcam" and gates[4].explanation
    assert parse_gates({"accuracy": 0.5}, ["deletion_auc=0.3"]) == [
        Gate("accuracy", ">=", 0.5),
        Gate("deletion_auc", "<=", 0.3),
    ]
    assert parse_gates(None, None) == [] and parse_gates(" , ") == []


@pytest.mark.parametrize(
    ("under", "over", "words"),
    [
        ("acc=0.9", None, ["unknown metric 'acc'", "balanced_accuracy", "pointing_game"]),
        ("accuracy", None, ["not NAME=THRESHOLD"]),
        ("accuracy=high", None, ["not a finite number"]),
        ("accuracy=nan", None, ["not a finite number"]),
        ("accuracy=95", None, ["between 0 and 1"]),
        ("deletion_auc=0.2", None, ["lower-is-better", "fail_over"]),
        (None, "accuracy=0.9", ["higher-is-better", "fail_under"]),
        (None, "insertion_auc=0.9", ["higher-is-better"]),
        ("gini[healthy]=0.1", None, ["not reported per class"]),
        ("sensitivity[]=0.1", None, ["empty class"]),
        ("accuracy=0.9,accuracy=0.8", None, ["gated twice"]),
    ],
)
def test_parse_rejects_bad_specs(under, over, words):
    with pytest.raises(UsageError) as e:
        parse_gates(under, over)
    assert e.value.param == ("fail_under" if under else "fail_over")
    for w in words:
        assert w in str(e.value)


def test_targets_are_checked_against_what_the_evaluation_reports():
    names = ["healthy", "red_lesion", "bright_lesion"]
    with pytest.raises(UsageError, match=r"method 'gradcam'.*its methods are softcam"):
        check_gate_targets(parse_gates("gradcam.gini=0.1"), methods=["softcam"])
    with pytest.raises(UsageError, match=r"class 'malignant'; the classes are healthy, red_lesion, bright_lesion"):
        check_gate_targets(parse_gates("sensitivity[malignant]=0.8"), class_names=names)
    with pytest.raises(UsageError, match=r"per class; name one, e\.g\. sensitivity\[healthy\]"):
        check_gate_targets(parse_gates("sensitivity=0.8"), class_names=names)
    with pytest.raises(UsageError, match="ordinal"):
        check_gate_targets(parse_gates("quadratic_kappa=0.8"), ordinal=False)
    with pytest.raises(UsageError, match="original"):
        check_gate_targets(parse_gates("original.accuracy=0.8"), original=False)
    with pytest.raises(UsageError, match="softcam .the default. or original"):
        check_gate_targets(parse_gates("gradcam.accuracy=0.8"))
    check_gate_targets(parse_gates("sensitivity=0.8"), class_names=["a", "b"])  # two classes: class 1's


def test_outcomes_messages_and_junit_of_values():
    ok = GateOutcome(Gate("accuracy", ">=", 0.5), 0.75, True)
    bad = GateOutcome(Gate("deletion_auc", "<=", 0.1), 0.25, False)
    missing = GateOutcome(Gate("pointing_game", ">=", 0.5), None, False)
    assert bad.message == "deletion_auc = 0.2500 is over 0.1" and "not measured" in missing.message
    assert bad.to_dict() == {"metric": "deletion_auc", "op": "<=", "threshold": 0.1, "value": 0.25, "passed": False}
    require_gates([ok])
    with pytest.raises(GateFailed) as e:
        require_gates([ok, bad, missing])
    assert e.value.exit_code == EXIT_GATE == 8 and str(e.value).startswith("2 of 3 quality gates failed")
    suite = ET.fromstring(junit_xml([ok, bad, missing])).find("testsuite")
    assert suite is not None and suite.get("tests") == "3" and suite.get("failures") == "2"
    assert [len(tc.findall("failure")) for tc in suite.iter("testcase")] == [0, 1, 1]


# --------------------------------------------------------------------------------------------------------
# Through the CLI, on a tiny synthetic dataset and a converted model
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    return make_lesion_model(tmp_path_factory.mktemp("gates"))


def _evaluate(lesions, *args):
    return run_cli("evaluate", lesions["model"], lesions["data"], "--steps", "2", "--device", "cpu", *args)


@pytest.fixture(scope="module")
def measured(lesions):
    r = _evaluate(lesions, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["gates"] == []
    softcam = next(m for m in data["explanation"]["methods"] if m["key"] == "softcam")["metrics"]
    per_class = {p["name"]: p for p in data["classification"]["per_class"]}
    return {
        "accuracy": data["classification"]["accuracy"],
        "sensitivity[healthy]": per_class["healthy"]["sensitivity"],
        "activation_precision": softcam["activation_precision"]["mean"],
        "deletion_auc": softcam["deletion_auc"]["mean"],
    }


def _junit(path):
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    cases = suites[0].findall("testcase")
    failures = [f for tc in cases for f in tc.findall("failure")]
    assert suites[0].get("tests") == root.get("tests") == str(len(cases))
    assert suites[0].get("failures") == root.get("failures") == str(len(failures))
    assert all(f.get("message") for f in failures)
    assert all(tc.get("name") and tc.get("classname") and tc.get("time") for tc in cases)
    assert float(suites[0].get("time")) > 0 and suites[0].get("timestamp")
    return cases, failures


def test_gates_pass_just_under_the_measured_values(lesions, measured, tmp_path):
    m = measured
    assert all(v is not None for v in m.values()), m
    under = ",".join(
        f"{k}={max(0.0, m[k] - 1e-3):.6f}" for k in ("accuracy", "sensitivity[healthy]", "activation_precision")
    )
    out = tmp_path / "report"
    junit = out / "gates.xml"  # in the report folder, which does not exist yet
    r = _evaluate(
        lesions,
        "--fail-under",
        under,
        "--fail-over",
        f"deletion_auc={m['deletion_auc'] + 1e-3:.6f}",
        "--junit",
        junit,
        "-o",
        out,
    )
    assert r.returncode == EXIT_OK, r.stderr
    assert "quality gates" in r.stdout and "FAIL" not in r.stdout and r.stdout.count("pass") >= 4
    cases, failures = _junit(junit)
    assert len(cases) == 4 and not failures
    saved = json.loads((out / "metrics.json").read_text())
    assert [g["passed"] for g in saved["gates"]] == [True] * 4
    assert [g["metric"] for g in saved["gates"]] == [
        "accuracy",
        "sensitivity[healthy]",
        "activation_precision",
        "deletion_auc",
    ]
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_gates_fail_just_over_the_measured_values(lesions, measured, tmp_path):
    m = measured
    junit = tmp_path / "report.xml"
    junit.write_text("old")
    out = tmp_path / "report"
    args = [
        "--fail-under",
        f"accuracy={max(0.0, m['accuracy'] - 1e-3):.6f},activation_precision={m['activation_precision'] + 1e-3:.6f}",
        "--fail-over",
        f"deletion_auc={m['deletion_auc'] - 1e-3:.6f}",
        "--junit",
        junit,
        "-o",
        out,
        "--json",
    ]
    r = _evaluate(lesions, *args)
    assert r.returncode == EXIT_OUTPUT and "--force" in r.stderr  # the JUnit file exists: nothing was computed
    assert junit.read_text() == "old" and not out.exists()
    r = _evaluate(lesions, *args, "--force")
    assert r.returncode == EXIT_GATE, r.stderr
    assert r.stderr.startswith("error: 2 of 3 quality gates failed")
    assert "activation_precision" in r.stderr and "deletion_auc" in r.stderr and "accuracy =" not in r.stderr
    data = json.loads(r.stdout)
    assert [(g["metric"], g["op"], g["passed"]) for g in data["gates"]] == [
        ("accuracy", ">=", True),
        ("activation_precision", ">=", False),
        ("deletion_auc", "<=", False),
    ]
    assert data["gates"][1]["value"] == pytest.approx(m["activation_precision"])
    cases, failures = _junit(junit)  # the reports are still written when a gate fails
    assert len(cases) == 3 and len(failures) == 2
    assert [bool(tc.findall("failure")) for tc in cases] == [False, True, True]
    assert json.loads((out / "metrics.json").read_text())["gates"] == data["gates"]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Quality gates" in page and "2 of 3 failed" in page
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_terminal_lists_the_failing_gate(lesions, measured):
    sens = measured["sensitivity[healthy]"]
    r = _evaluate(
        lesions,
        "--fail-under",
        f"sensitivity[healthy]={sens:.6f},activation_precision={measured['activation_precision'] + 1e-3:.6f}",
    )
    assert r.returncode == EXIT_GATE, r.stderr
    cells = [ln.strip("│ ").split() for ln in r.stdout.splitlines()]
    rows = {c[0]: " ".join(c) for c in cells if c and c[0] in ("sensitivity[healthy]", "activation_precision")}
    assert "pass" in rows["sensitivity[healthy]"] and "FAIL" in rows["activation_precision"]
    assert "1 of 2 quality gates failed: activation_precision" in r.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--fail-under", "sensitivity[malignant]=0.5"], ["--fail-under", "'malignant'", "bright_lesion, healthy"]),
        (["--fail-under", "gradcam.pointing_game=0.5"], ["--fail-under", "its methods are softcam"]),
        (["--fail-under", "accuracy=95"], ["--fail-under", "between 0 and 1"]),
        (["--fail-under", "deletion_auc=0.5"], ["--fail-over"]),
    ],
)
def test_unknown_names_are_usage_errors_before_the_work(lesions, tmp_path, args, words):
    out = tmp_path / "report"
    r = _evaluate(lesions, *args, "-o", out, "--junit", tmp_path / "j.xml")
    assert r.returncode == EXIT_USAGE, r.stderr
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr
    assert not out.exists() and not (tmp_path / "j.xml").exists()


def test_library_gates_from_a_mapping(lesions, measured, tmp_path):
    from softcamify.evaluation import evaluate

    junit = tmp_path / "gates.xml"
    res = evaluate(
        lesions["model"],
        lesions["data"],
        steps=2,
        device="cpu",
        fail_under={"accuracy": measured["accuracy"], "softcam.activation_precision": 1.0},
        junit=junit,
    )
    assert [(o.gate.name, o.passed) for o in res.gates] == [("accuracy", True), ("softcam.activation_precision", False)]
    assert res.to_dict()["gates"][0]["value"] == pytest.approx(measured["accuracy"])
    assert res.junit == str(junit)
    _, failures = _junit(junit)
    assert len(failures) == 1
    with pytest.raises(GateFailed, match="1 of 2 quality gates failed: softcam.activation_precision"):
        require_gates(res.gates)
