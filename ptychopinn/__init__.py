"""The ``ptychopinn`` command: the top of the package layering (see docs/architecture.md).

Entry points live here, above the packages they drive: the dispatcher (:mod:`ptychopinn.cli`) and
the subcommands that use more than one package (``simulate``, ``inspect``, ``reconstruct`` in
:mod:`ptychopinn.commands`). ``train``, ``export`` and ``serve`` stay with the package that owns
them (``training.cli``, ``export.cli``, ``serving.cli``). Nothing below imports this package.
"""
