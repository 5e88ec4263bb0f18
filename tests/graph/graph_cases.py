"""Small model/guide pairs shared by the tests of :mod:`hlvm.graph` (tests/graph/test_graph_*.py)."""

from hlvm.graph.extract import example_input, pair_graphs
from hlvm.zoo import VAE, VDM, BottomUpHVAE, TopDownHVAE

from conftest import user_hierarchy_class

LatentDiffusionVAE = user_hierarchy_class()

D = 4  # data dimension of the small test models


def small(name):
    """Small instances of the zoo and of the README's user-defined hierarchy."""
    return {
        "vae": lambda: VAE((D,), latent_dim=3, hidden=8),
        "hvae-bu": lambda: BottomUpHVAE((D,), latent_dims=(8, 4), hidden=8),
        "hvae-td": lambda: TopDownHVAE((D,), layers=3, latent_dim=4, hidden=8),
        "hvae-td-diffusion": lambda: TopDownHVAE((D,), layers=3, posterior="diffusion", hidden=8),
        "hvae-td-denoiser": lambda: TopDownHVAE((D,), layers=3, posterior="diffusion", transition="denoiser",
                                                shared=True, hidden=8),
        "vdm": lambda: VDM((D,), likelihood="binary", T=3, backbone="mlp", width=8, depth=1),
        "user": lambda: LatentDiffusionVAE((D,), latent_dim=3, T=2, hidden=8),
    }[name]()


def graphs(name):
    m = small(name)
    return pair_graphs(m.model, m.guide, example_input(m))
