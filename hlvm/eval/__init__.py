"""Evaluation of any hierarchy: importance weights and IWAE, PSIS k̂, active units, and the one
evaluation loop behind ``hlvm.evaluate``, ``hlvm compare`` and the Trainer."""
