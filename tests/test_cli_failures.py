"""Every command-line entry, given bad values, fails in one line: a non-zero exit, one line on stderr naming the
problem, no traceback, and no file changed.

The commands are the ``--ci`` cases of ``benchmarks/failure_sweep.py`` (the whole sweep, with interruptions, runs
by hand), run as users type them, two at a time, once per module; each test then checks one command's result.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import failure_sweep as sweep

CI_CASES = sorted(case.name for case in sweep.cases(Path("/workspace")) if case.ci)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    ws = sweep.make_workspace(tmp_path_factory.mktemp("cli"))
    verdicts, changed = sweep.run_cases(ws, [case for case in sweep.cases(ws) if case.ci])
    return {v["case"]: v for v in verdicts}, changed


@pytest.mark.parametrize("name", CI_CASES)
def test_bad_value_fails_in_one_line(results, name):
    verdict = results[0][name]
    assert verdict["exit"] != 0 and not verdict["traceback"], verdict
    assert verdict["stderr_lines"] == 1 and verdict["expected"], verdict
    assert "weights_only=False" not in verdict["message"]


def test_no_file_changed(results):
    assert results[1] == []


def test_verdicts_tell_one_line_from_a_traceback():
    import subprocess

    case = sweep.Case("x", (), "named")
    traceback = subprocess.CompletedProcess((), 1, "", "Traceback (most recent call last):\n  ...\nValueError: named\n")
    assert not sweep.judge(case, traceback)["one_line"]
    notice = (
        "/x/monai/bundle/scripts.py:1019: UserWarning: parsing config_file c.json: ...\n  workflow = create_workflow(\n"
    )
    one = subprocess.CompletedProcess((), 1, "", notice + "medsyn run failed: ValueError: named\n")
    assert sweep.judge(case, one)["one_line"] and sweep.judge(case, one)["expected"]
    assert not sweep.judge(case, subprocess.CompletedProcess((), 0, "", "medsyn: named\n"))["one_line"]
