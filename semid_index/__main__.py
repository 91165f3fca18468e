"""``python -m semid_index``: the ``semid`` command."""

from .cli import main

main(prog_name="semid")
