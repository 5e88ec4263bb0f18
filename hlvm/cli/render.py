"""``hlvm render``: plate diagrams of a zoo model or a user's hierarchy, model and guide side by side.

    hlvm render vdm --T 1000 --out docs --format svg
    hlvm render all --out docs --format png            # the README's four diagrams (make render)
    hlvm render examples/user_hierarchy.py:LatentDiffusionVAE --T 4

See :mod:`hlvm.render` (De Sousa Ribeiro & Glocker, Figures 2 and 5).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

__all__ = ["register", "run", "build_model", "ZOO_NAMES"]

#: the zoo's CLI names (models.ZOO), rendered in this order by ``hlvm render all``
ZOO_NAMES = ("vae", "hvae-bu", "hvae-td", "vdm")


def _steps(text: str):
    """``--T``: a positive integer, or ``inf``/``none`` for continuous time."""
    if text.lower() in ("inf", "none", "continuous"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--T must be a positive integer or 'inf', got {text!r}") from None
    if value < 1:
        raise ValueError(f"--T must be a positive integer or 'inf', got {text!r}")
    return value


def register(sub):
    p = sub.add_parser("render", help="plate diagrams of model and guide side by side",
                       description="Render a model/guide pair: a zoo name (vae, hvae-bu, hvae-td, vdm), "
                                   "'all' for the four, or path/to/file.py:ClassName.")
    p.add_argument("model", help="vae | hvae-bu | hvae-td | vdm | all | path/to/file.py:ClassName")
    p.add_argument("--T", default="4", help="diffusion steps (an integer, or 'inf' for continuous time; default 4)")
    p.add_argument("--layers", type=int, default=3, help="stochastic layers of the hierarchical VAEs (default 3)")
    p.add_argument("--out", default=".", help="output directory (created if missing; default .)")
    p.add_argument("--format", default="svg", choices=("svg", "png", "pdf", "dot"))
    p.add_argument("--distributions", action="store_true", help="label every site with its distribution")
    p.add_argument("--full", action="store_true", help="draw every step of long chains")
    p.set_defaults(func=run)


def run(args):
    from hlvm.graph import render_module

    T = _steps(str(args.T))
    if args.layers < 1:
        raise ValueError(f"--layers must be >= 1, got {args.layers}")
    names = ZOO_NAMES if args.model == "all" else (args.model,)
    for name in names:
        module, stem = build_model(name, T=T, layers=args.layers)
        ext = "dot" if args.format == "dot" else args.format
        path = Path(args.out) / f"{stem}.{ext}"
        render_module(module, filename=path, format=args.format, distributions=args.distributions,
                      compact=not args.full)
        print(path)


def build_model(name: str, T=4, layers: int = 3):
    """The module to render and its file stem, for a zoo name or ``path/to/file.py:ClassName``."""
    from models import ZOO

    if name in ZOO:
        kwargs = {"vdm": {"T": T}, "hvae-bu": {"latent_dims": 16, "layers": layers},
                  "hvae-td": {"layers": layers}}.get(name, {})
        return ZOO[name](**kwargs), name
    if ":" not in name:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(ZOO)}, 'all' or path/to/file.py:ClassName")
    cls = _load_class(name)
    wanted = {"T": T, "layers": layers}
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    module = cls(**{k: v for k, v in wanted.items() if k in params})
    return module, cls.__name__


def _load_class(spec: str):
    path_text, _, cls_name = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    mod_name = f"_hlvm_user_{path.stem}"
    loader = importlib.util.spec_from_file_location(mod_name, path)
    if loader is None or loader.loader is None:
        raise ValueError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(loader)
    sys.modules[mod_name] = module
    loader.loader.exec_module(module)
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise ValueError(f"{path} defines no {cls_name!r}")
    return cls
