"""``python -m marktune.run``: the same command as ``marktune run`` (:mod:`marktune.cli.run`)."""
import sys

from marktune.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
