"""`focaldet train`: see detector/cli/train.py (`python tools/train.py --help`)."""

import sys

from detector.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
