"""`focaldet export`: see detector/cli/export.py (`python tools/export.py --help`)."""

import sys

from detector.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
