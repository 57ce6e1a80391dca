"""`python -m trademl.cli`: the console script."""

from trademl.cli import main

main()
