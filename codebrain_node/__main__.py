"""``python -m codebrain_node`` is the ``codebrain-node`` command (used to start engine worker processes)."""

from codebrain_node.cli import main

main()
