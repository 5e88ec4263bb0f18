"""The instant command line: ``hlvm --help`` and every ``hlvm <cmd> --help`` build their parsers
without importing torch or Pyro (the import is the start-up cost: ~2–3 s)."""

import subprocess
import sys

import pytest

from hlvm.cli import COMMANDS

PROBE = ("import sys, contextlib, io\n"
         "from hlvm.cli import main\n"
         "with contextlib.redirect_stdout(io.StringIO()):\n"
         "    try:\n"
         "        main(sys.argv[1:])\n"
         "    except SystemExit as e:\n"
         "        assert e.code == 0, e.code\n"
         "heavy = sorted(m for m in ('torch', 'pyro', 'numpy') if m in sys.modules)\n"
         "print(','.join(heavy) or 'none')\n")


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in COMMANDS])
def test_help_imports_neither_torch_nor_pyro(argv):
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "none"


def test_importing_hlvm_is_light_until_a_name_is_used():
    code = ("import sys, hlvm\n"
            "assert 'torch' not in sys.modules\n"
            "hlvm.DiffusionELBO\n"
            "assert 'torch' in sys.modules and 'DiffusionELBO' in dir(hlvm)\n"
            "assert set(hlvm.__all__) <= set(dir(hlvm))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
