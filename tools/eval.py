"""`focaldet eval`: see detector/cli/eval.py (`python tools/eval.py --help`)."""

import sys

from detector.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
