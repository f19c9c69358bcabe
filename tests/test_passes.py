"""The README's test command runs the suite once per ledger; its second pass leaves out only the tests whose
outcome cannot depend on the ledger, which the first pass ran (conftest.runs_on_any_ledger)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

FILES = ["tests/test_ledger_transitions.py", "tests/test_architecture.py", "tests/test_cli_trust.py"]


def collected(**env: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *FILES],
                         cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return {line for line in out.stdout.splitlines() if "::" in line}


def test_the_second_pass_deselects_only_what_cannot_depend_on_its_ledger():
    everything = collected(NIGHTSHIFT_TEST_DATABASE="postgres", NIGHTSHIFT_TEST_ANY_LEDGER_DONE="0")
    second = collected(NIGHTSHIFT_TEST_DATABASE="postgres", NIGHTSHIFT_TEST_ANY_LEDGER_DONE="1")
    left_out = everything - second
    assert second < everything
    assert {t for t in everything if "test_ledger_transitions" in t} <= second  # given the pass's ledger
    assert not any("test_architecture" in t for t in second)                    # given no ledger
    assert {t for t in left_out if "test_cli_trust" in t} == {
        t for t in everything if "test_every_bad_input_is_one_line_and_exit_2" in t}  # marked any_ledger
    assert any("test_submit_prints_the_id_and_nothing_else" in t for t in second)
