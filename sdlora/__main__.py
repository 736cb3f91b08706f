"""`python -m sdlora` runs the command-line interface."""

from sdlora.cli import main

raise SystemExit(main())
