"""`focaldet predict`: see detector/cli/predict.py (`python tools/predict.py --help`)."""

import sys

from detector.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
