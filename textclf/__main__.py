"""``python -m textclf`` runs the command line (also what ``torchrun -m textclf train ...`` launches)."""

import sys

from .cli import main

sys.exit(main())
