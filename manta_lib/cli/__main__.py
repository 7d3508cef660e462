"""``python -m manta_lib.cli`` runs the ``manta`` command."""

from manta_lib.cli import main

main()
