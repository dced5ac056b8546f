"""`focaldet publish`: see detector/cli/publish.py (`python tools/publish_checkpoint.py --help`)."""

import sys

from detector.cli.publish import main

if __name__ == "__main__":
    sys.exit(main())
