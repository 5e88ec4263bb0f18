"""The hlvm model zoo: one Pyro model/guide pair per file, each a Hierarchy (see
:mod:`hlvm.programs.contract`).  The CLI names ``vae``, ``hvae-bu``, ``hvae-td`` and ``vdm`` are
registered as ``hlvm.models`` entry points in ``pyproject.toml``.
"""

from .vae import VAE
from .hvae_bottom_up import BottomUpHVAE
from .hvae_top_down import TopDownHVAE
from .vdm import VDM

__all__ = ["VAE", "BottomUpHVAE", "TopDownHVAE", "VDM"]
