"""Run a trained detector on image files, folders and glob patterns: predictions.json and one drawn image each.

    python tools/predict.py work_dirs/quickstart/checkpoints/last.pt photos/ --out-dir predictions/
    python tools/predict.py model.pt "shots/**/*.jpg" extra.png --out-dir out/ --score-thr 0.3 --no-draw
    python tools/predict.py old_last.pt photos/ --out-dir out/ --config configs/quickstart.yaml   # no metadata

INPUT: image files (any format PIL or torchvision reads), folders (searched recursively for .jpg .jpeg .png .bmp
.webp .tif .tiff .gif) and glob patterns (quote them; ** crosses folders). The model's config, class names and
test size come from the checkpoint (--config for checkpoints written before they carried them).

Writes DIR/predictions.json, a list in input order of {"file_name", "width", "height", "detections": [{"box":
[x1, y1, x2, y2], "score", "category_id", "class_name"}]} (pixels of the image as viewers show it, EXIF
orientation applied; category ids as in the training annotations), and, unless --no-draw, each image with its
detections scoring at least --draw-thr at DIR/<its path below the inputs' common folder>. predictions.json is
replaced, complete, when the run ends, also on an error or Ctrl-C (see detector/predict/image_files.py).
An unreadable file is reported by name and skipped; with --strict it stops the run (after writing the images
before it). Files are decoded in --num-workers DataLoader workers; the model runs in batches of one padded shape.

Exit status: 0 done; 1 bad input (checkpoint, no matching file, unreadable image with --strict); 2 bad config or
command line; 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from detector.cli.args import add_opts_argument, add_raw_weights_argument, interruptible, tool_parser
from detector.cli.entry import run_command

# torch and the model code are imported once the command line is parsed (``--help`` answers at once).


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("checkpoint", help="a focaldet checkpoint (training's last.pt, a published or converted file)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--out-dir", required=True, help="where predictions.json and the drawn images go")
    parser.add_argument("--score-thr", type=float, help="keep detections scoring at least this (default: the "
                                                        "model's model.test.score_thr)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--config", help="the model's config, for checkpoints that do not carry one")
    add_raw_weights_argument(parser)
    add_opts_argument(parser, "config overrides, e.g. model.test.score_thr=0.01 data.test_min_size=640")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: the config's evaluation.tta, "
                        "else a left-right flip at the test size (set scales with --opts evaluation.tta.scales=[...])")
    parser.add_argument("--no-draw", action="store_true", help="write predictions.json only")
    parser.add_argument("--draw-thr", type=float, default=0.3, help="draw detections scoring at least this "
                                                                    "(default 0.3)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding images (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0:
        parser.error("--batch-size must be >= 1 and --num-workers >= 0")
    return args


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run as Ctrl-C does: predictions.json is still written


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from detector.data.image_io import ImageReadError
    from detector.predict import Detector
    from detector.predict.image_files import ImageFiles, RunSummary, find_images, output_names, predict_files
    from detector.predict.streaming import identity

    if args.config:
        detector = Detector(args.config, args.checkpoint, device=args.device, overrides=args.opts,
                            ema=not args.raw_weights)
    else:
        detector = Detector.from_checkpoint(args.checkpoint, device=args.device, overrides=args.opts,
                                            ema=not args.raw_weights)
    out_dir = Path(args.out_dir)
    paths = find_images(args.inputs, exclude=out_dir)
    dataset = ImageFiles(paths, detector.preparer, keep_original=not args.no_draw)
    loader = DataLoader(dataset, batch_size=None, num_workers=args.num_workers, collate_fn=identity)
    summary = RunSummary()
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    try:
        predict_files(detector, loader, output_names(paths), out_dir, args.score_thr, args.batch_size,
                      None if args.no_draw else args.draw_thr, args.strict, not args.no_progress, summary,
                      tta=True if args.tta else None)
    except (KeyboardInterrupt, ImageReadError) as err:
        print(f"stopped: {summary.line(out_dir / 'predictions.json')}", file=sys.stderr)
        if isinstance(err, KeyboardInterrupt):
            return 130
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(summary.line(out_dir / "predictions.json"))
    return 0


@interruptible
def main(argv=None) -> int:
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
