"""``python -m motorec``: the same command line as the ``motorec`` console script."""
import sys

from motorec.cli import main

sys.exit(main())
