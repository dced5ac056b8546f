"""rescale_boxes, run_inference with a fake model and loader, gather_results (also over 2 gloo ranks)."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import detector
from detector.evaluation import COCOEvaluator, gather_results, rescale_boxes, run_inference

from .conftest import GT_BOXES, IMAGES, make_coco_dict, write_json

LABEL_TO_CAT_ID = [1, 3, 7, 9]


def test_rescale_boxes_hand_computed():
    # Resized (h=100, w=200) from original (h=300, w=400): x * 2, y * 3, then clip to 400 x 300.
    boxes = torch.tensor([[10.0, 10.0, 50.0, 20.0], [150.0, 90.0, 210.0, 120.0], [-4.0, -1.0, 5.0, 5.0]])
    rescaled = rescale_boxes(boxes, img_size=(100, 200), orig_size=(300, 400))
    expected = torch.tensor([[20.0, 30.0, 100.0, 60.0], [300.0, 270.0, 400.0, 300.0], [0.0, 0.0, 10.0, 15.0]])
    torch.testing.assert_close(rescaled, expected)
    assert boxes[2, 0] == -4.0  # input untouched


def test_rescale_boxes_float32_tensor_sizes_and_empty():
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float16)
    rescaled = rescale_boxes(boxes, torch.tensor([10, 10]), torch.tensor([20, 5]))
    assert rescaled.dtype == torch.float32
    torch.testing.assert_close(rescaled, torch.tensor([[0.5, 4.0, 1.5, 8.0]]))
    assert rescale_boxes(torch.zeros(0, 4), (10, 10), (20, 20)).shape == (0, 4)


class _Dataset:
    label_to_cat_id = LABEL_TO_CAT_ID


class _Loader(list):
    """A list of (images, targets) batches with a ``dataset`` attribute, as a DataLoader has."""

    dataset = _Dataset()


class _FakeDetector(nn.Module):
    """Returns predefined detections; image b's index into ``outputs`` is stored in pixel [b, 0, 0, 0]."""

    def __init__(self, outputs: list[dict]) -> None:
        super().__init__()
        self.outputs = outputs
        self.weight = nn.Parameter(torch.ones(1))
        self.seen_modes: list[tuple[bool, bool, bool]] = []
        self.seen_image_sizes: list = []

    def forward(self, images: torch.Tensor, image_sizes=None) -> list[dict]:
        self.seen_image_sizes.append(image_sizes)
        self.seen_modes.append(
            (self.training, torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"))
        )
        dtype = torch.bfloat16 if torch.is_autocast_enabled("cpu") else torch.float32
        picked = [self.outputs[int(index)] for index in images[:, 0, 0, 0]]
        return [{**out, "boxes": out["boxes"].to(dtype), "scores": out["scores"].to(dtype)} for out in picked]


def _batch(indices: list[int], sizes: list[tuple[tuple[int, int], tuple[int, int], int]]):
    """A padded (B, 3, 64, 64) batch whose pixel [b, 0, 0, 0] holds the fake model's output index."""
    images = torch.zeros(len(indices), 3, 64, 64)
    images[:, 0, 0, 0] = torch.tensor(indices, dtype=torch.float32)
    targets = [
        {"image_id": image_id, "img_size": img_size, "orig_size": orig_size}
        for img_size, orig_size, image_id in sizes
    ]
    return images, targets


def test_run_inference_rescales_and_maps_categories():
    outputs = [
        {  # image 10: input (h=50, w=100) from original (h=100, w=400): x * 4, y * 2
            "boxes": torch.tensor([[10.0, 5.0, 20.0, 25.0], [90.0, 40.0, 110.0, 60.0]]),
            "scores": torch.tensor([0.9, 0.5]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
        {  # image 30: no resize
            "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
            "scores": torch.tensor([0.25]),
            "labels": torch.tensor([3]),
        },
    ]
    model = _FakeDetector(outputs).train()
    loader = _Loader(
        [
            _batch([0, 1], [((50, 100), (100, 400), 10), ((64, 64), (64, 64), 20)]),
            _batch([2], [((8, 8), (8, 8), torch.tensor(30))]),
        ]
    )
    results = run_inference(model, loader, device="cpu", progress=False)
    assert results == [
        {"image_id": 10, "category_id": 1, "bbox": [40.0, 10.0, 40.0, 40.0], "score": pytest.approx(0.9)},
        # x2 = 110 * 4 = 440 and y2 = 60 * 2 = 120 are clipped to the 400 x 100 original.
        {"image_id": 10, "category_id": 7, "bbox": [360.0, 80.0, 40.0, 20.0], "score": 0.5},
        {"image_id": 30, "category_id": 9, "bbox": [1.0, 2.0, 2.0, 2.0], "score": 0.25},
    ]
    assert model.seen_modes == [(False, True, False)] * 2  # eval mode, inference mode, no autocast
    assert model.seen_image_sizes == [[(50, 100), (64, 64)], [(8, 8)]]  # each image's own size, for the clipping
    assert not model.training


def test_run_inference_autocast_and_explicit_label_map():
    outputs = [
        {
            "boxes": torch.tensor([[2.0, 2.0, 6.0, 10.0]]),
            "scores": torch.tensor([0.5]),
            "labels": torch.tensor([1]),
        }
    ]
    model = _FakeDetector(outputs)
    loader = [_batch([0], [((16, 16), (32, 32), 5)])]  # a plain list: no dataset attribute
    with pytest.raises(AttributeError, match="label_to_cat_id"):
        run_inference(model, loader, device="cpu", progress=False)
    results = run_inference(
        model, loader, torch.device("cpu"), amp_dtype=torch.bfloat16, progress=True, label_to_cat_id=[4, 8]
    )
    assert model.seen_modes[-1] == (False, True, True)  # autocast around the forward
    assert results == [{"image_id": 5, "category_id": 8, "bbox": [4.0, 4.0, 8.0, 16.0], "score": 0.5}]


def test_run_inference_then_evaluate_perfect(tmp_path):
    """Ground truth boxes shrunk into a half-size input frame come back as perfect COCO results."""
    gt_file = write_json(tmp_path / "gt.json", make_coco_dict())
    cat_to_label = {cat_id: label for label, cat_id in enumerate(LABEL_TO_CAT_ID)}
    outputs, sizes = [], []
    for index, image in enumerate(IMAGES):
        orig_size = (image["height"], image["width"])
        img_size = (image["height"] // 2, image["width"] // 2)
        gt = [(cat, box) for image_id, cat, box in GT_BOXES if image_id == image["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in gt]) / 2
        labels = torch.tensor([cat_to_label[cat_id] for cat_id, _ in gt])
        outputs.append({"boxes": boxes, "scores": torch.ones(len(gt)), "labels": labels})
        sizes.append((img_size, orig_size, image["id"]))
    loader = _Loader([_batch([0, 1], sizes[:2]), _batch([2], sizes[2:])])
    results = run_inference(_FakeDetector(outputs), loader, "cpu", progress=False)
    metrics = COCOEvaluator(gt_file).evaluate(results)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-12), key


def test_gather_results_without_distributed_returns_input():
    results = [{"image_id": 1}]
    assert gather_results(results) is results


def test_gather_results_two_gloo_ranks(tmp_path):
    """Rank 0 runs in this process, rank 1 in a subprocess (one extra interpreter keeps the test fast)."""
    script = tmp_path / "rank1.py"
    script.write_text(
        textwrap.dedent(
            """
            import datetime, json, sys
            import torch.distributed as dist
            from detector.evaluation import gather_results

            timeout = datetime.timedelta(seconds=60)
            dist.init_process_group("gloo", init_method=sys.argv[1], rank=1, world_size=2, timeout=timeout)
            gathered = gather_results([{"image_id": 10}, {"image_id": 11}])
            dist.destroy_process_group()
            print(json.dumps(gathered))
            """
        )
    )
    repo_root = str(Path(detector.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")])}
    init_method = "file://" + str(tmp_path / "dist_init")
    rank1 = subprocess.Popen(
        [sys.executable, str(script), init_method],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        dist.init_process_group(
            "gloo", init_method=init_method, rank=0, world_size=2, timeout=datetime.timedelta(seconds=60)
        )
        try:
            gathered = gather_results([{"image_id": 0}])
        finally:
            dist.destroy_process_group()
        stdout, stderr = rank1.communicate(timeout=60)
    finally:
        if rank1.poll() is None:  # a rank left waiting for a failed peer must not outlive the test
            rank1.kill()
            rank1.wait()
    assert rank1.returncode == 0, stderr
    assert gathered == [{"image_id": 0}, {"image_id": 10}, {"image_id": 11}]
    assert json.loads(stdout.strip().splitlines()[-1]) == []
    assert not dist.is_initialized()


def test_run_inference_orders_results_by_image_id_whatever_the_batches():
    """A shape-grouped loader visits images out of id order; the results come back ordered by image id (each
    image's detections in the model's order), so the result list does not depend on the batching."""
    one = {"boxes": torch.tensor([[1.0, 1.0, 3.0, 3.0]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([0])}
    two = {"boxes": torch.tensor([[2.0, 2.0, 4.0, 6.0], [0.0, 0.0, 1.0, 1.0]]), "scores": torch.tensor([0.9, 0.1]),
           "labels": torch.tensor([1, 2])}
    model = _FakeDetector([one, two])
    same = ((8, 8), (8, 8))
    shuffled = _Loader([_batch([0], [(*same, 30)]), _batch([1, 0], [(*same, 10), (*same, 20)])])
    in_order = _Loader([_batch([1, 0], [(*same, 10), (*same, 20)]), _batch([0], [(*same, 30)])])
    results = run_inference(model, shuffled, "cpu", progress=False)
    assert [(r["image_id"], r["score"]) for r in results] == \
        [(10, pytest.approx(0.9)), (10, pytest.approx(0.1)), (20, 0.5), (30, 0.5)]
    assert results == run_inference(model, in_order, "cpu", progress=False)


class _SignalledAtFork(Exception):
    pass


_fork_signal = {"armed": False, "during_start": None}


def _signal_self_at_fork() -> None:
    """A fork hook: sends SIGTERM to this process while a loader worker is being forked (once, when armed), as a
    SIGTERM to the whole process group can arrive; records whether the handler already ran by then."""
    if _fork_signal["armed"]:
        _fork_signal["armed"] = False
        os.kill(os.getpid(), signal.SIGTERM)
        _fork_signal["during_start"] = "handled in the fork hook"


os.register_at_fork(before=_signal_self_at_fork)


class _OneImage(torch.utils.data.Dataset):
    label_to_cat_id = LABEL_TO_CAT_ID

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        return _batch([0], [((64, 64), (64, 64), 1)])


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="signal masks are POSIX")
def test_a_stop_signal_while_loader_workers_start_reaches_the_handler_after_the_start():
    """Without holding the signals back, the handler's exception is raised inside torch's fork (Python prints
    'Exception ignored' with a traceback and drops it) and the inference goes on as if nothing happened."""
    def handler(signum, frame):
        raise _SignalledAtFork

    loader = torch.utils.data.DataLoader(_OneImage(), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork")
    previous = signal.signal(signal.SIGTERM, handler)
    _fork_signal.update(armed=True, during_start=None)
    done = threading.Event()  # a thread that may take the signal, as tqdm's monitor or TensorBoard's writer can
    threading.Thread(target=done.wait, daemon=True).start()
    try:
        with pytest.raises(_SignalledAtFork):
            run_inference(_FakeDetector([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                          "labels": torch.zeros(0, dtype=torch.int64)}]), loader, "cpu",
                          progress=False)
    finally:
        _fork_signal["armed"] = False
        signal.signal(signal.SIGTERM, previous)
        done.set()
    assert _fork_signal["during_start"] == "handled in the fork hook"  # the hook ran to its end: the signal waited
