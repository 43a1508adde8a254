"""`python -m workflow_scripts.cli`: the same as `distillery`."""

import sys

from .main import main

sys.exit(main())
