"""`python -m otad.mkswu` (what scripts/mkswu runs)."""

from otad.mkswu.cli import main

raise SystemExit(main())
