"""Evaluate a checkpoint on the config's val set, or score an existing COCO-format results file.

    python tools/eval.py CONFIG CHECKPOINT [--out results.json] [--metrics-out metrics.json] [--per-class]
    python tools/eval.py CHECKPOINT [--opts data.val.ann_file=... data.val.img_dir=...]   # its stored config
    python tools/eval.py CONFIG --results results.json [--metrics-out metrics.json]      # or CHECKPOINT --results
    torchrun --nproc_per_node 8 tools/eval.py CONFIG CHECKPOINT     # sharded inference, metrics on rank 0
    python tools/eval.py CHECKPOINT --opts "evaluation.tta={scales: [640, 800, 960], flips: [false, true]}"  # TTA

A checkpoint alone is evaluated with the config it carries (every checkpoint focaldet writes holds it; --opts
override it, e.g. another val set); one written before checkpoints carried metadata needs its CONFIG before it.
A first argument ending in .yaml / .yml is a config, anything else a checkpoint.

--metrics-out writes flat JSON with AP, AP50, AP75, APs, APm, APl as fractions (pycocotools' numbers), plus
APr, APc, APf for LVIS (data.val.format: lvis).

Exit status: 0 on success; 1 on bad input (annotation, image, checkpoint or results file), reported as one
`error: ...` message naming the file and the entry; 2 on a bad config, override or command line.
"""

from __future__ import annotations

import argparse
import logging
import sys

from detector.cli.args import (add_config_argument, add_opts_argument, add_raw_weights_argument,
                               interruptible, tool_parser)

# torch, the datasets (lvis) and the evaluators are imported once the command line is parsed (``--help`` answers
# at once).


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    add_config_argument(parser, "YAML config file, or a checkpoint that carries its config")
    parser.add_argument("checkpoint", nargs="?", help="checkpoint (.pt) holding the model weights")
    parser.add_argument("--results", help="score this COCO-format results JSON instead of running a model")
    parser.add_argument("--out", help="write the model's detections to this COCO-format results JSON")
    parser.add_argument("--metrics-out", help="write the metrics as flat JSON")
    parser.add_argument("--per-class", action="store_true", help="print AP per class")
    add_raw_weights_argument(parser)
    add_opts_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--shard-dir", default="work_dirs/eval_shards",
                        help="folder shared by all processes for LVIS result shards (several processes only)")
    args = parser.parse_args(argv)
    args.config_source = None  # a checkpoint whose stored config is used
    if args.checkpoint is None and not is_config_file(args.config):  # CHECKPOINT alone, or CHECKPOINT --results
        args.config_source, args.config = args.config, None
        args.checkpoint = None if args.results else args.config_source
    if (args.checkpoint is None) == (args.results is None):
        parser.error("give either a CHECKPOINT or --results FILE")
    if args.results and args.out:
        parser.error("--out writes a model's detections; it does not apply with --results")
    return args


def is_config_file(path: str) -> bool:
    return path.lower().endswith((".yaml", ".yml"))


def score_results_file(cfg, path: str, per_class: bool) -> dict:
    # Read the ground truth with the datasets' validating readers first (no images needed): a malformed or
    # wrong-format data.val.ann_file then fails with the file and entry named, not deep inside pycocotools.
    from detector.data.coco import CocoDetection
    from detector.data.lvis import LVISDetection
    from detector.engine.evaluate import build_evaluator
    from detector.evaluation import load_results, load_results_columnar
    from detector.evaluation.results import check_result_columns

    reader = LVISDetection if cfg.data.val.format == "lvis" else CocoDetection
    reader(cfg.data.val.ann_file, img_dir=None)
    evaluator = build_evaluator(cfg, cfg.data.val.ann_file)
    if cfg.data.val.format == "lvis":  # LVIS result files are large: read them as columns
        results = load_results_columnar(path, image_ids=evaluator.image_ids, cat_ids=evaluator.cat_ids)
        check_result_columns(path, results)
    else:
        results = load_results(path, image_ids=evaluator.image_ids, cat_ids=evaluator.cat_ids)
    return evaluator.evaluate(results, per_class=per_class)


def evaluate_checkpoint(cfg, config: str, checkpoint: str, out: str | None, per_class: bool, progress: bool,
                        shard_dir: str, raw_weights: bool = False) -> dict:
    import torch

    from detector.cli.common import load_trained_model
    from detector.engine.evaluate import evaluate_model
    from detector.runtime.device import resolve_device
    from detector.runtime.distributed import init_distributed

    _, _, local_rank = init_distributed()
    device = resolve_device(cfg.runtime.device, local_rank)
    model = load_trained_model(cfg, checkpoint, config, prefer_ema=not raw_weights)
    if cfg.data.on_bad_image == "skip":
        logging.getLogger("detector").warning(
            "data.on_bad_image=skip: an unreadable val image is replaced by the next one, which is then scored "
            "twice; the metrics are biased unless no image is skipped (see the data warnings)")
    model.to(device)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return evaluate_model(cfg, model, device, results_out=out, per_class=per_class, progress=progress,
                          shard_dir=shard_dir)


def run(args: argparse.Namespace) -> int:
    from detector.cli.common import load_checkpoint_config
    from detector.data.build import prepare_synthetic_data
    from detector.evaluation import format_metrics_table, format_per_class_table, write_metrics_json
    from detector.runtime.distributed import barrier, is_main_process

    cfg = load_checkpoint_config(args.config_source or args.checkpoint, args.config, args.opts)
    if is_main_process():
        prepare_synthetic_data(cfg)  # the quick start's val set, generated on first use
    barrier()
    if args.results:
        metrics = score_results_file(cfg, args.results, args.per_class)
    else:
        metrics = evaluate_checkpoint(cfg, args.config, args.checkpoint, args.out, args.per_class,
                                      not args.no_progress, args.shard_dir, args.raw_weights)
    if not is_main_process():
        return 0
    print("AP in percent" + ("; --metrics-out keeps fractions:" if args.metrics_out else ":"))
    print(format_metrics_table(metrics))
    if args.per_class and metrics.get("per_class"):
        per_class = metrics["per_class"]
        frequency = metrics.get("per_class_frequency")  # LVIS: r / c / f group of each class
        if frequency:
            per_class = {f"{name} [{frequency[name]}]": ap for name, ap in per_class.items()}
        print(format_per_class_table(per_class))
    if args.metrics_out:
        write_metrics_json(args.metrics_out, metrics)
    return 0


def check_outputs(args: argparse.Namespace) -> None:
    """--out and --metrics-out can be written: checked before the inference, which may take hours."""
    from detector.runtime.work_dir import check_output_file

    for option, path in (("--out", args.out), ("--metrics-out", args.metrics_out)):
        if path:
            check_output_file(path, option)


def run_checked(args: argparse.Namespace) -> int:
    from detector.runtime.distributed import on_main_process

    on_main_process(lambda: check_outputs(args))  # every process stops alike when the main one cannot write
    return run(args)


@interruptible
def main(argv=None) -> int:
    args = parse_args(argv)
    from detector.cli.common import run_tool, start_logging
    from detector.runtime.distributed import get_rank, process_group

    with process_group():
        start_logging(get_rank())
        return run_tool(lambda: run_checked(args), rank=get_rank())


if __name__ == "__main__":
    sys.exit(main())
