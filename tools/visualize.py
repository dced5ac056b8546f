"""Draw ground truth and detections on val images: one PNG per image, named <image id>.png.

    python tools/visualize.py CONFIG CHECKPOINT --out-dir vis/ [--score-thr 0.3] [--max-images 16]
    python tools/visualize.py CONFIG --results results.json --out-dir vis/ [--image-ids 3 17 42]

Each PNG shows the original image twice: the ground truth on the left, the detections scoring at least
--score-thr on the right ("class score"), one colour per class on both sides. With a CHECKPOINT the model
runs on the chosen images through the evaluation's inference path (val transforms, the model's
post-processing, boxes mapped back to original pixels); with --results the detections are read from a
COCO-format results file (e.g. written by tools/eval.py --out).

Exit status: 0 on success; 1 on bad input (unknown image id, missing or malformed file, empty results file),
reported as one `error: ...` line; 2 on a bad config, override or command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from detector.cli.common import (add_config_argument, add_opts_argument, load_tool_config, load_trained_model,
                                 tool_parser)
from detector.cli.entry import run_command
from detector.data.build import build_dataset, prepare_synthetic_data
from detector.evaluation import load_results
from detector.runtime.device import resolve_amp_dtype, resolve_device
from detector.visualization import (DEFAULT_SCORE_THR, detections_by_image, draw_image, predict_images, save_png,
                                    select_indices)

logger = logging.getLogger("detector")


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    add_config_argument(parser)
    parser.add_argument("checkpoint", nargs="?", help="checkpoint (.pt) holding the model weights")
    parser.add_argument("--results", help="draw the detections of this COCO-format results JSON instead")
    parser.add_argument("--out-dir", required=True, help="folder for the PNGs (created)")
    parser.add_argument("--score-thr", type=float, default=DEFAULT_SCORE_THR,
                        help=f"draw detections scoring at least this (default {DEFAULT_SCORE_THR})")
    parser.add_argument("--max-images", type=int, default=16, help="at most this many images (default 16)")
    parser.add_argument("--image-ids", type=int, nargs="+",
                        help="draw these val image ids (default: the first --max-images images)")
    parser.add_argument("--scale", type=int, default=1, help="enlarge the images this many times (default 1)")
    add_opts_argument(parser)
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.results is None):
        parser.error("give either a CHECKPOINT or --results FILE")
    if args.max_images < 1 or args.scale < 1:
        parser.error("--max-images and --scale must be >= 1")
    return args


def model_results(cfg, config: str, checkpoint: str, dataset, indices: list[int]) -> list[dict]:
    """Detections of the checkpoint's model on the chosen images, as COCO results in original pixels."""
    device = resolve_device(cfg.runtime.device)
    model = load_trained_model(cfg, checkpoint, config).to(device)
    return predict_images(model, dataset, indices, device, batch_size=cfg.data.test_batch_size,
                          size_divisor=cfg.data.size_divisor, amp_dtype=resolve_amp_dtype(cfg.runtime.amp, device),
                          test_size=(cfg.data.test_min_size, cfg.data.test_max_size))


def file_results(path: str, dataset) -> list[dict]:
    """The results file's detections, validated against the val set's image and category ids."""
    results = load_results(path, image_ids=dataset.image_ids, cat_ids=dataset.cat_ids)
    if not results:
        raise ValueError(f"results file {path} holds no detections (an empty list): nothing to draw")
    return results


def run(args: argparse.Namespace) -> None:
    cfg = load_tool_config(args.config, args.opts)
    prepare_synthetic_data(cfg)
    dataset = build_dataset(cfg, "val")
    indices = select_indices(dataset, args.image_ids, None if args.image_ids else args.max_images)
    if args.results:
        results = file_results(args.results, dataset)
    else:
        results = model_results(cfg, args.config, args.checkpoint, dataset, indices)
    detections = detections_by_image(results, dataset.cat_id_to_label, [dataset.image_ids[i] for i in indices])
    if not detections:
        logger.warning("no detections on the %d chosen images: only the ground truth is drawn", len(indices))
    for index in indices:
        panel = draw_image(dataset, index, detections, score_thr=args.score_thr, scale=args.scale)
        save_png(panel, Path(args.out_dir) / f"{dataset.image_ids[index]}.png")
    logger.info("wrote %d images to %s", len(indices), args.out_dir)


def main(argv=None) -> int:
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
