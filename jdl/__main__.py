"""`python -m jdl` runs the `jdl` command."""

from jdl.cli import main

raise SystemExit(main())
