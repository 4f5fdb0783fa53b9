"""``python -m marktune.search``: the same command as ``marktune search`` (:mod:`marktune.cli.search`)."""
import sys

from marktune.cli.search import main

if __name__ == "__main__":
    sys.exit(main())
