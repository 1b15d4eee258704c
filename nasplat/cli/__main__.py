"""`python -m nasplat.cli`: the `nasplat` command without its console script."""
import sys

from . import main

sys.exit(main())
