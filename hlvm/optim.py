"""``hlvm.optim`` (``hlvm.optim.Adam``: one torch optimizer over every parameter SVI captures),
kept as the public spelling; the code lives in :mod:`hlvm.training.optim`."""

from .training.optim import Adam, AdamW, SingleOptim

__all__ = ["SingleOptim", "Adam", "AdamW"]
