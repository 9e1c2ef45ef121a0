"""``ptychopinn`` subcommands owned by ``ptycho_torch`` (see :mod:`ptycho_torch.cli`)."""
