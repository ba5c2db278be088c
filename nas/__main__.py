"""`python -m nas ...` runs the same CLI as the `nas` console script."""
import sys

from nas.cli import main

sys.exit(main())
