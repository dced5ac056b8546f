"""Parameters per module and FLOPs of one forward for the model a config describes.

    python tools/analyze_model.py configs/retinanet/retinanet_r50_fpn_1x_coco.yaml
    python tools/analyze_model.py CONFIG --input-size 800 1333 --depth 2 --opts model.num_classes=91

Prints a table (module path, parameters, trainable parameters, GFLOPs) down to --depth levels (1: backbone,
neck, head) and the totals. FLOPs come from torch.utils.flop_counter.FlopCounterMode over one inference
forward of a 1 x 3 x H x W input, H x W padded up to data.size_divisor as the loaders do; one
multiply-add counts as 2 FLOPs, and only convolutions and matrix products are counted. The model is
built with random weights (model.backbone.weights and model.init_checkpoint are ignored: counts do not
depend on them).

Exit status: 0 done; 2 for a bad config, override or command line.
"""

from __future__ import annotations

import argparse
import sys

from detector.cli.common import add_config_argument, add_opts_argument, load_tool_config, tool_parser
from detector.cli.entry import run_command
from detector.models import build_model
from detector.models.analysis import analyze, format_table, padded_size


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    add_config_argument(parser)
    parser.add_argument("--input-size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"),
                        help="input height and width before padding (default 800 1333)")
    parser.add_argument("--depth", type=int, default=1, help="module levels shown (default 1; 0: total only)")
    parser.add_argument("--device", default="cpu", help="device of the counting forward (default cpu)")
    add_opts_argument(parser)
    args = parser.parse_args(argv)
    if min(args.input_size) < 1 or args.depth < 0:
        parser.error("--input-size needs positive sides and --depth must be >= 0")
    return args


def run(args: argparse.Namespace) -> None:
    # the weights do not change any count: never download or read them here
    cfg = load_tool_config(args.config, args.opts, fixed=["model.backbone.weights=null", "model.init_checkpoint=null"])
    height, width = padded_size(*args.input_size, cfg.data.size_divisor)
    rows, total_flops = analyze(build_model(cfg), (height, width), args.depth, device=args.device)
    total = rows[0]
    print(format_table(rows))
    print(f"\n{args.config}: {total.params:,} parameters ({total.trainable:,} trainable); "
          f"{total_flops / 1e9:.2f} GFLOPs for one {height}x{width} input ({args.input_size[0]}x{args.input_size[1]} "
          f"padded to a multiple of {cfg.data.size_divisor}; FlopCounterMode, 1 multiply-add = 2 FLOPs)")


def main(argv=None) -> int:
    return run_command(parse_args, run, argv, log=False, bad_input=())


if __name__ == "__main__":
    sys.exit(main())
