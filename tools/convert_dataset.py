"""`focaldet convert`: see detector/cli/convert.py (`python tools/convert_dataset.py --help`)."""

import sys

from detector.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
