"""The hlvm model zoo: one Pyro model/guide pair per file.

``ZOO`` maps the CLI names to classes: ``vae``, ``hvae-bu``, ``hvae-td``, ``vdm``.
"""

from .vae import VAE
from .hvae_bottom_up import BottomUpHVAE
from .hvae_top_down import TopDownHVAE
from .vdm import VDM

ZOO = {"vae": VAE, "hvae-bu": BottomUpHVAE, "hvae-td": TopDownHVAE, "vdm": VDM}

__all__ = ["VAE", "BottomUpHVAE", "TopDownHVAE", "VDM", "ZOO"]
