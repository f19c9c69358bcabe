"""Each command imports only its own module of app.cli (app.cli.root.COMMANDS), and every command is listed."""
from __future__ import annotations

import importlib
import subprocess
import sys

from conftest import ROOT

MODULES = ["jobs", "maintenance", "monitor", "ops", "queues", "service", "web"]


def test_every_command_is_listed_with_the_module_that_defines_it():
    from app.cli.root import COMMANDS, main
    defined = {}
    for module in MODULES:
        before = set(main.commands)
        importlib.import_module(f"app.cli.{module}")
        defined.update({name: module for name in set(main.commands) - before})
    assert defined == {name: module for name, module in COMMANDS.items() if name in defined}
    assert set(main.commands) == set(COMMANDS)
    for name, module in COMMANDS.items():
        assert main.commands[name].callback.__module__ == f"app.cli.{module}", name


def test_a_command_imports_only_its_own_module():
    code = ("import sys; from app.cli import main; main([sys.argv[1], '--help'], standalone_mode=False); "
            "print(' '.join(sorted(m[8:] for m in sys.modules if m.startswith('app.cli.') and m != 'app.cli.root'"
            " and m != 'app.cli.common')))")
    for command, loaded in (("worker", "service"), ("submit", "bulk jobs"), ("status", "monitor"),
                            ("retry", "ops")):
        out = subprocess.run([sys.executable, "-c", code, command], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[-1] == loaded, (command, out.stdout)
    listed = subprocess.run([sys.executable, "-m", "app", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0 and all(f"  {name} " in listed.stdout for name in ("submit", "worker", "web"))
