"""``python -m blitzdns``: the same as the ``blitzdns`` console script."""

from blitzdns.entry import main

main()
