"""The README's test command runs the suite once per ledger; its second pass leaves out only the tests whose
outcome cannot depend on the ledger, which the first pass ran (conftest.runs_on_any_ledger). Each pass runs the
tests marked `serial` alone and the rest side by side (conftest.PHASES)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

FILES = ["tests/test_ledger_transitions.py", "tests/test_architecture.py", "tests/test_cli_trust.py"]


def collected(files: list[str] = FILES, **env: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                         cwd=ROOT, env={**os.environ, "NIGHTSHIFT_TEST_PHASE": "", **env}, capture_output=True,
                         text=True, timeout=120)
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


def test_the_serial_and_parallel_phases_split_a_pass_without_losing_a_test():
    files = [*FILES, "tests/test_recycling.py", "tests/test_configurations.py"]
    everything = collected(files)
    serial = collected(files, NIGHTSHIFT_TEST_PHASE="serial")
    parallel = collected(files, NIGHTSHIFT_TEST_PHASE="parallel")
    assert serial | parallel == everything and not serial & parallel
    assert {t for t in everything if "test_recycling" in t} <= serial                        # marked by module
    assert any("test_a_lease_lost_while_the_worker_lived_says_so" in t for t in serial)      # marked by test
    assert any("test_process_workers_each_open_their_own_connections" in t for t in parallel)
