"""Pyro pieces from which hierarchies are written: the diffusion chain, likelihoods, stochastic
layers, the ELBO that collapses chains analytically, the Hierarchy contract and sampling any
program forward."""
