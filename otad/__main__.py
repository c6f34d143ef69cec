"""`python -m otad` runs the command line."""

from otad.cli import main

raise SystemExit(main())
