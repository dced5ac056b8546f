"""RetinaNet Fig. 1: cross-entropy and focal loss against the probability of the ground-truth class.

    python tools/plot_focal_loss.py --out docs/figures/focal_loss.png [--gammas 0 0.5 1 2 5]

FL(p_t) = -(1 - p_t)^gamma log(p_t) without alpha, evaluated with detector.losses.focal_loss; gamma 0 is CE.
"""

from __future__ import annotations

import argparse
import sys

from detector.analysis.focal_curves import plot_focal_loss
from detector.cli.common import EXIT_BAD_CONFIG, tool_parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--out", required=True, help="output PNG file")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0, 0.5, 1, 2, 5], help="focusing parameters")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if any(g < 0 for g in args.gammas):
        print(f"error: gammas must be >= 0, got {args.gammas}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"wrote {plot_focal_loss(args.gammas, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
