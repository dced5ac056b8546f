"""The anchor head's box-loss weighting (``model.loss_box.weighting``), against hand computations.

iou_target, as the official EFL code (United-Perception IOUPostProcess.get_loss / get_weights_normalizer): each
positive's 1 - GIoU weighted by u_i, the IoU of its decoded box with its ground truth (detached), the sum divided
by max(sum of u over all processes, 1) / world_size; DDP then averages the processes' gradients, which makes the
loss the weighted mean over every process's positives. Checked in one process and in two (gloo).

The hand case: anchors (0, 0, 10, 10) and (20, 20, 40, 40) are their own ground truths (MaxIoU: IoU 1, positive)
and (60, 60, 70, 70) is background. Predicted deltas (0.1, 0, 0, 0) move the first box 1 px right: (1, 0, 11, 10),
IoU 90 / 110 = 9/11, enclosing box = union, so GIoU = 9/11 and the loss term 2/11. Deltas (0, 0, log 0.5, 0) halve
the second box's width: (25, 20, 35, 40), IoU 200 / 400 = 1/2 = GIoU, loss term 1/2.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from detector.assigners import MaxIoUAssigner
from detector.boxes import DeltaBoxCoder
from detector.config import ConfigError, load_config
from detector.losses import FocalLoss, GIoULoss
from detector.models.heads.anchor_head import AnchorHead
from detector.models.heads.common import TowerSpec
from detector.models.outputs import DenseOutputs
from detector.runtime.distributed import destroy_distributed, init_distributed

ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [60.0, 60.0, 70.0, 70.0]])
DELTAS = torch.tensor([[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, math.log(0.5), 0.0], [0.0, 0.0, 0.0, 0.0]])
IOU = [9 / 11, 1 / 2]       # u_i of the two positives
GIOU_LOSS = [2 / 11, 1 / 2]  # 1 - GIoU_i


def head(weighting: str) -> AnchorHead:
    return AnchorHead(num_classes=2, num_anchors=1, num_levels=1, tower=TowerSpec(in_channels=8, num_convs=0),
                      assigner=MaxIoUAssigner(), box_coder=DeltaBoxCoder(), cls_loss=FocalLoss(),
                      box_loss=GIoULoss(), quality_branch="iou", box_weighting=weighting)


def box_loss(weighting: str, gt_anchor_indices: list[int]) -> float:
    """loss_box of one image whose ground truths are the anchors ``gt_anchor_indices`` (class 0)."""
    outputs = DenseOutputs(torch.zeros(1, 3, 2), DELTAS[None].clone(), torch.zeros(1, 3), ANCHORS, [3], (80, 80))
    target = {"boxes": ANCHORS[gt_anchor_indices].reshape(-1, 4), "labels": torch.zeros(len(gt_anchor_indices),
                                                                                           dtype=torch.int64)}
    return head(weighting).loss(outputs, [target])["loss_box"].item()


def test_iou_target_weighting_one_process():
    weighted = sum(loss * iou for loss, iou in zip(GIOU_LOSS, IOU))  # 18/121 + 1/4
    assert box_loss("iou_target", [0, 1]) == pytest.approx(weighted / max(sum(IOU), 1.0))  # sum(IOU) = 29/22 > 1
    # one positive with u = 1/2: the normaliser is at least 1, so 1/4, not (1/2 * 1/2) / (1/2) = 1/2
    assert box_loss("iou_target", [1]) == pytest.approx(0.25)
    assert box_loss("none", [0, 1]) == pytest.approx(sum(GIOU_LOSS) / 2)  # the mean over positives
    assert box_loss("iou_target", []) == 0.0


def test_centerness_weighting_one_process():
    """Both positives' anchor centres are their boxes' centres: centerness 1, so the weighted mean is the mean."""
    assert box_loss("centerness", [0, 1]) == pytest.approx(sum(GIOU_LOSS) / 2)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    init_distributed("gloo")
    # both positives split over the ranks; then a single positive (u = 1/2) on rank 0 and none on rank 1
    losses = {"split": box_loss("iou_target", [rank]), "one_positive": box_loss("iou_target", [1] if rank == 0 else [])}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(losses))
    destroy_distributed()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_iou_target_normaliser_over_two_processes(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    normaliser = max(sum(IOU), 1.0) / 2  # the targets' sum over both processes, over the world size
    for rank in range(2):
        assert ranks[rank]["split"] == pytest.approx(GIOU_LOSS[rank] * IOU[rank] / normaliser)
    # DDP averages the ranks: the weighted mean over all positives, as one process holding both
    assert (ranks[0]["split"] + ranks[1]["split"]) / 2 == pytest.approx(box_loss("iou_target", [0, 1]))
    # total 1/2 < 1: normaliser max(1/2, 1) / 2 = 1/2 on both ranks
    assert [r["one_positive"] for r in ranks] == pytest.approx([0.25 / 0.5, 0.0])
    assert (ranks[0]["one_positive"] + ranks[1]["one_positive"]) / 2 == pytest.approx(box_loss("iou_target", [1]))


@pytest.mark.parametrize("name, weighting", [
    ("atss/atss_r50_fpn_1x_coco.yaml", "centerness"), ("quickstart_atss.yaml", "centerness"),
    ("efl/efl_r50_fpn_2x_lvis_rfs.yaml", "iou_target"), ("efl/fl_r50_fpn_2x_lvis_rfs.yaml", "iou_target"),
    ("quickstart_lvis_efl.yaml", "iou_target"), ("retinanet/retinanet_r50_fpn_1x_coco.yaml", "none"),
    ("gfl/gfl_r50_fpn_1x_coco.yaml", "none"),
])
def test_configs_weighting(name, weighting):
    assert load_config(f"configs/{name}").model.loss_box.weighting == weighting


def test_weighting_refused_on_the_gfl_head():
    with pytest.raises(ConfigError, match="weighting"):
        load_config("configs/gfl/gfl_r50_fpn_1x_coco.yaml", ["model.loss_box.weighting=iou_target"])
