"""`python -m sdlora` runs the command-line interface."""

import sys

from sdlora.cli import main

sys.exit(main())
