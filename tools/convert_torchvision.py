"""Convert torchvision's COCO-trained RetinaNet R50-FPN (v1 or v2) into a focaldet checkpoint and config.

    python tools/convert_torchvision.py retinanet_resnet50_fpn_coco-eeacb38b.pth --out work_dirs/tv_v1/model.pt
    python tools/convert_torchvision.py --weights RetinaNet_ResNet50_FPN_Weights.COCO_V1 --out work_dirs/tv_v1/model.pt
    python tools/convert_torchvision.py --weights RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1 --out work_dirs/tv_v2/m.pt

Writes the checkpoint and, next to it, the matching config (same name, .yaml). Then:

    python tools/eval.py work_dirs/tv_v1/model.yaml work_dirs/tv_v1/model.pt      # COCO val2017 under data/coco
    python tools/train.py work_dirs/tv_v1/model.yaml --opts ...                    # fine-tune from the weights

--weights loads through torchvision (its cache in $TORCH_HOME/hub/checkpoints, or a download). A local file
is the state dict torchvision saves (its published .pth, or model.state_dict()); v1 or v2 is detected.
The 80 COCO category outputs are kept (label i = i-th category id in increasing order, as focaldet's COCO
dataset numbers them); --all-classes keeps torchvision's 91 (label = category id), for comparisons only.

Exit status: 0 done; 1 for weights that are not torchvision's RetinaNet R50-FPN (the unmatched keys are
listed) or cannot be read; 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import sys

from detector.cli.common import tool_parser
from detector.cli.entry import run_command
from detector.conversion.torchvision_retinanet import DEFAULT_BN_EPS, ConversionError, convert_torchvision


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("state_dict", nargs="?", help="a torchvision RetinaNet state dict file (.pth)")
    parser.add_argument("--weights", help="a torchvision weight name, e.g. RetinaNet_ResNet50_FPN_Weights.COCO_V1")
    parser.add_argument("--out", required=True, help="the focaldet checkpoint to write (.pt); the config goes "
                                                     "next to it with a .yaml suffix")
    parser.add_argument("--version", choices=("v1", "v2"), help="expected model version (default: detected)")
    parser.add_argument("--all-classes", action="store_true",
                        help="keep torchvision's 91 class outputs instead of the 80 COCO categories")
    parser.add_argument("--bn-eps", type=float, default=None,
                        help="eps of the torchvision model's BatchNorm layers (default: "
                             f"{DEFAULT_BN_EPS['v1']} for v1, {DEFAULT_BN_EPS['v2']} for v2: what torchvision uses "
                             "with its published weights; 1e-5 for a v1 model you trained yourself)")
    args = parser.parse_args(argv)
    if (args.state_dict is None) == (args.weights is None):
        parser.error("give either a STATE_DICT file or --weights NAME")
    return args


def convert(args: argparse.Namespace) -> None:
    checkpoint, config, version = convert_torchvision(args.state_dict or args.weights, args.out, version=args.version,
                                                      all_classes=args.all_classes, bn_eps=args.bn_eps)
    print(f"torchvision RetinaNet {version} -> {checkpoint}\nconfig: {config}\n"
          f"evaluate: python tools/eval.py {config} {checkpoint}\n"
          f"fine-tune: python tools/train.py {config}  (model.init_checkpoint loads the converted weights)")


def main(argv=None) -> int:
    return run_command(parse_args, convert, argv, log=False, bad_input=(ConversionError, FileNotFoundError, OSError))


if __name__ == "__main__":
    sys.exit(main())
