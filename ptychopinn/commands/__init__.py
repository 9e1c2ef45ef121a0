"""``ptychopinn`` subcommands that span packages: ``simulate``, ``inspect``, ``reconstruct`` (see :mod:`ptychopinn.cli`)."""
