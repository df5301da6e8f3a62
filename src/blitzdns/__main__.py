"""``python -m blitzdns``: the same as the ``blitzdns`` console script."""

from blitzdns.cli import main

main()
