"""The ``truthsteer`` command line (entry point :func:`server.cli.main.main`).

It sits on top of the import graph: it may import ``server``, ``probes`` and ``steering``, and
nothing imports it. ``main`` builds the parser (models, directions, generate, probes, serve);
``push`` and ``recommend`` are the ``directions push/delete`` and ``directions recommend``
sub-commands.
"""
