"""``python -m marktune.evaluate``: the same command as ``marktune evaluate`` (:mod:`marktune.cli.evaluate`)."""
import sys

from marktune.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
