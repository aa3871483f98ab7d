"""`python -m headhunter.cli` runs the CLI (same as the `headhunter` console script)."""

from headhunter.cli import main

main()
