"""The zoo cannot be shadowed (issue 22): from a folder holding a ``models.py`` — the commonest file
name in ML projects — the zoo loads from Python (``hlvm.zoo``, the registry), ``hlvm train vae`` runs
and ``python -m hlvm --help`` works.  Each runs in a fresh interpreter started in that folder."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the installed package gives
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _users_folder(tmp_path):
    (tmp_path / "models.py").write_text("raise RuntimeError('the user models.py was imported')\n")
    return tmp_path


def test_the_zoo_loads_from_a_folder_with_a_models_py(tmp_path):
    code = ("from hlvm.zoo import VAE, VDM\nfrom hlvm.registry import load_class\n"
            "assert load_class('vae') is VAE and load_class('vdm') is VDM, (load_class('vae'), VAE)\n"
            "print(VAE.__module__)")
    r = _run(["-c", code], _users_folder(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hlvm.zoo.vae"


def test_python_dash_m_hlvm_and_train_run_from_that_folder(tmp_path):
    cwd = _users_folder(tmp_path)
    r = _run(["-m", "hlvm", "--help"], cwd)
    assert r.returncode == 0 and "usage: hlvm" in r.stdout, r.stderr
    r = _run(["-m", "hlvm", "train", "vae", "--data", "digits", "--steps", "2", "--batch-size", "16", "--out", "run",
              "--threads", "1", "--set", "latent_dim=2", "hidden=8"], cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (cwd / "run" / "checkpoint.pt").is_file()


def test_the_package_list_covers_every_package_of_the_tree():
    """pyproject.toml lists the packages (the zoo is mapped from models/ to hlvm.zoo): none forgotten."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hlvm").rglob("__init__.py")}
    assert listed == tree | {"hlvm.zoo"}
