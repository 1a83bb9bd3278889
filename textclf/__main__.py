"""``python -m textclf`` runs the command line (also what ``torchrun -m textclf train ...`` launches)."""

from .cli import run

run()
