"""Each command imports only its own module of app.cli (app.cli.root.COMMANDS), and every command is listed."""
from __future__ import annotations

import gc
import importlib
import subprocess
import sys
import tomllib

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


def test_the_executable_skips_the_last_collection_of_what_it_imported():
    """`nightshift` (and `python -m app`) freeze the objects left at exit, so shutdown does not walk them all
    (~35 ms of a ~200 ms `nightshift submit`); the exit code and the atexit handlers are the command's as before,
    and `main` called in-process leaves the caller's collector alone."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"nightshift": "app.cli:run"}
    code = ("import atexit, gc, sys; from app.cli import run; "
            "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0)); "
            "sys.argv = ['nightshift'] + sys.argv[1:]; run()")
    for args, code_expected in ((["--help"], 0), (["submit", "no_such_task"], 2)):
        out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == code_expected, out.stderr
        assert out.stdout.splitlines()[-1] == "frozen at exit: True", out.stdout
    from app.cli import main
    before = gc.get_freeze_count()
    main(["--help"], standalone_mode=False)
    assert gc.get_freeze_count() == before
    assert (ROOT / "app" / "__main__.py").read_text().split() == ["from", "app.cli", "import", "run", "run()"]
