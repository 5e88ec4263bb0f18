"""Subcommands of the ``hlvm`` CLI, one module each (see :mod:`hlvm.cli`)."""
