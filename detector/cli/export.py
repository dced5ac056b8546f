"""Export a trained detector to ONNX or TorchScript, with box decoding and NMS inside the graph.

    focaldet export work_dirs/quickstart/checkpoints/last.pt --format onnx --out quickstart.onnx
    python tools/export.py model.pt --format onnx --out model.onnx --dynamic             # any batch, height, width
    python tools/export.py model.pt --format torchscript --out model.torchscript --input-size 512 512

The exported model takes
    images       float32 (B, 3, H, W): RGB in [0, 1], normalised by the config's data.mean / data.std, each image
                 resized by the test rule and padded with zeros at the bottom and right to H x W;
    image_sizes  int64 (B, 2): each image's (h, w) after the resize, before the padding;
and returns boxes (B, D, 4) xyxy in input pixels, scores (B, D), labels (B, D) (class indices, -1 in empty slots)
and num_detections (B,), D = model.test.max_dets. The mean, std, test sizes, size divisor and class names are
stored in the file (ONNX metadata_props; the TorchScript extra file focaldet.json).

Without --dynamic an ONNX model takes exactly --batch-size x 3 x H x W (--input-size, default: the square that holds
any image after the test resize, e.g. 1344 x 1344 for test_max_size 1333). ONNX needs the `export` extra
(pip install "focaldet[export]").

Exit status: 0 done; 1 bad input (checkpoint, size, format, an exporter failure); 2 bad config or command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector.cli.args import add_opts_argument, add_raw_weights_argument, interruptible, tool_parser
from detector.cli.entry import run_command

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("checkpoint", help="a focaldet checkpoint (training's last.pt, a published or converted file)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    parser.add_argument("--out", help="the file to write (default: the checkpoint's name with .onnx / .torchscript)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="traced input size, multiples of data.size_divisor (the only size without --dynamic)")
    parser.add_argument("--dynamic", action="store_true", help="free batch, height and width axes (ONNX)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the traced input (default 1)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, at least 11)")
    parser.add_argument("--config", help="the model's config, for checkpoints that do not carry one")
    add_raw_weights_argument(parser)
    add_opts_argument(parser, "config overrides, e.g. model.test.score_thr=0.3 model.test.max_dets=50")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = str(Path(args.checkpoint).with_suffix(SUFFIXES[args.format]))
    return args


def run(args: argparse.Namespace) -> int:
    from detector.predict import Detector

    detector = Detector(args.config, args.checkpoint, device="cpu", overrides=args.opts, ema=not args.raw_weights)
    path = detector.export(args.out, args.format, input_size=args.input_size, dynamic=args.dynamic,
                           opset=args.opset, batch_size=args.batch_size)
    size_mb = path.stat().st_size / 1e6
    print(f"exported {path} ({args.format}, {size_mb:.1f} MB, {len(detector.class_names)} classes"
          f"{', dynamic batch/height/width' if args.dynamic else ''})")
    return 0


@interruptible
def main(argv=None) -> int:
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
