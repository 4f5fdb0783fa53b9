"""``python -m marktune.report``: the same command as ``marktune report`` (:mod:`marktune.cli.report`)."""
import sys

from marktune.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
