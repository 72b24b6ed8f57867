"""One module per subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

These modules stay light at import time (``--help`` must be quick and must not
need ALSA or GPIO); heavy imports happen inside ``run``.
"""
