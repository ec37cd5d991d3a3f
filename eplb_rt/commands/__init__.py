"""Subcommands of the ``eplb-rt`` command line (see :mod:`eplb_rt.cli`)."""
