"""`python -m modelforge` runs the CLI."""

from modelforge.cli import main

main()
