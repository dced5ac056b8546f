"""CocoDetection on small hand-made COCO files."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import pytest
import torch

from detector.data import CocoDetection, build_transforms

CATEGORIES = [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}, {"id": 40, "name": "forty"}]


def box_ann(ann_id, image_id, category_id, bbox, iscrowd=0):
    """One COCO annotation with an xywh box."""
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
            "area": float(bbox[2] * bbox[3]), "iscrowd": iscrowd}


def test_category_mapping_is_sorted_and_contiguous_both_ways(make_coco):
    ann_file, img_dir = make_coco(
        [(5, 20, 30)],
        [box_ann(1, 5, 40, (1, 2, 3, 4)), box_ann(2, 5, 2, (5, 5, 5, 5)), box_ann(3, 5, 7, (0, 0, 10, 10))],
        CATEGORIES,
    )
    dataset = CocoDetection(ann_file, img_dir)
    assert dataset.num_classes == 3
    assert dataset.cat_ids == [2, 7, 40]
    assert dataset.label_to_cat_id == [2, 7, 40]
    assert dataset.class_names == ["two", "seven", "forty"]
    assert dataset.cat_id_to_label == {2: 0, 7: 1, 40: 2}
    _, target = dataset[0]
    assert target["labels"].tolist() == [2, 0, 1]  # category ids 40, 2, 7
    assert [dataset.cat_ids[label] for label in target["labels"].tolist()] == [40, 2, 7]
    assert dataset.image_category_ids() == [[2, 7, 40]]


def test_sample_format_without_transforms(make_coco):
    ann_file, img_dir = make_coco([(11, 20, 30)], [box_ann(1, 11, 2, (10, 4, 8, 6))], CATEGORIES)
    image, target = CocoDetection(ann_file, img_dir)[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 30)
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[10.0, 4.0, 18.0, 10.0]]  # xywh -> xyxy
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [0]
    assert target["ignore_boxes"].shape == (0, 4)
    assert target["image_id"] == 11 and isinstance(target["image_id"], int)
    assert target["orig_size"] == (20, 30) and target["img_size"] == (20, 30)


def test_decoded_pixels_match_the_file(make_coco):
    from PIL import Image

    ann_file, img_dir = make_coco([(3, 9, 13)], [], CATEGORIES)
    image, _ = CocoDetection(ann_file, img_dir)[0]
    expected = np.asarray(Image.open(os.path.join(img_dir, "3.png")).convert("RGB"))
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)


def test_crowd_boxes_become_ignore_boxes(make_coco):
    ann_file, img_dir = make_coco(
        [(1, 40, 40)],
        [box_ann(1, 1, 7, (0, 0, 10, 10)), box_ann(2, 1, 2, (5, 6, 20, 10), iscrowd=1)],
        CATEGORIES,
    )
    dataset = CocoDetection(ann_file, img_dir)
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]]
    assert target["labels"].tolist() == [1]
    assert target["ignore_boxes"].tolist() == [[5.0, 6.0, 25.0, 16.0]]
    assert dataset.stats["num_crowd"] == 1 and dataset.stats["num_boxes"] == 1


def test_boxes_are_clipped_and_empty_ones_dropped_and_counted(make_coco, caplog):
    ann_file, img_dir = make_coco(
        [(1, 20, 30)],
        [
            box_ann(1, 1, 7, (25, -5, 10, 10)),  # sticks out right and top -> clipped to (25, 0, 30, 5)
            box_ann(2, 1, 7, (3, 3, 0, 5)),  # zero width -> dropped
            box_ann(3, 1, 7, (40, 5, 5, 5)),  # entirely right of the image -> zero width after clipping
            box_ann(4, 1, 7, (1, 1, 2, 2)),  # untouched
        ],
        CATEGORIES,
    )
    with caplog.at_level(logging.INFO, logger="detector.data"):
        dataset = CocoDetection(ann_file, img_dir)
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[25.0, 0.0, 30.0, 5.0], [1.0, 1.0, 3.0, 3.0]]
    assert dataset.stats["num_clipped"] == 1
    assert dataset.stats["num_dropped"] == 2
    assert dataset.stats["num_boxes"] == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "detector.data"]
    assert len(messages) == 1 and "2 dropped" in messages[0] and "1 boxes clipped" in messages[0]


def test_image_without_boxes_gives_empty_tensors(make_coco):
    ann_file, img_dir = make_coco([(1, 10, 10), (2, 10, 12)], [box_ann(1, 1, 2, (0, 0, 4, 4))], CATEGORIES)
    dataset = CocoDetection(ann_file, img_dir)
    _, target = dataset[1]
    assert target["image_id"] == 2
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["ignore_boxes"].shape == (0, 4)
    assert dataset.stats["num_empty_images"] == 1


def test_filter_empty_keeps_only_images_with_non_crowd_boxes(make_coco):
    ann_file, img_dir = make_coco(
        [(1, 10, 10), (2, 10, 10), (3, 10, 10), (4, 10, 10)],
        [box_ann(1, 1, 2, (0, 0, 4, 4)), box_ann(2, 2, 2, (0, 0, 4, 4), iscrowd=1), box_ann(3, 4, 7, (1, 1, 2, 2))],
        CATEGORIES,
    )
    assert CocoDetection(ann_file, img_dir).image_ids == [1, 2, 3, 4]
    dataset = CocoDetection(ann_file, img_dir, filter_empty=True)
    assert dataset.image_ids == [1, 4] and len(dataset) == 2
    assert dataset.stats["num_filtered_images"] == 2
    assert dataset[1][1]["image_id"] == 4 and dataset[1][1]["labels"].tolist() == [1]


def test_metadata_needs_no_image_files(make_coco):
    ann_file, img_dir = make_coco([(9, 20, 40), (3, 30, 15)], [], CATEGORIES, write_images=False)
    dataset = CocoDetection(ann_file, img_dir)
    assert dataset.image_ids == [3, 9]
    assert dataset.get_image_info(1) == {"id": 9, "file_name": "9.png", "height": 20, "width": 40}
    assert dataset.aspect_ratios() == [2.0, 0.5]


def test_transforms_are_applied(make_coco):
    ann_file, img_dir = make_coco([(1, 20, 30)], [box_ann(1, 1, 2, (3, 4, 5, 6)), box_ann(2, 1, 7, (0, 0, 30, 20), 1)],
                                  CATEGORIES)
    transforms = build_transforms(train=False, min_size=40, max_size=1000)
    image, target = CocoDetection(ann_file, img_dir, transforms=transforms)[0]
    assert image.dtype == torch.float32 and image.shape == (3, 40, 60)
    assert target["img_size"] == (40, 60) and target["orig_size"] == (20, 30)
    assert torch.allclose(target["boxes"], torch.tensor([[6.0, 8.0, 16.0, 20.0]]))
    assert torch.allclose(target["ignore_boxes"], torch.tensor([[0.0, 0.0, 60.0, 40.0]]))


# ---------------------------------------------------------------------- errors
def test_missing_annotation_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(missing, str(tmp_path))


def test_missing_image_dir_is_named(make_coco, tmp_path):
    ann_file, _ = make_coco([(1, 10, 10)], [], CATEGORIES)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        CocoDetection(ann_file, str(tmp_path / "no_such_dir"))


def test_non_coco_json_names_file_and_missing_key(tmp_path):
    ann_file = tmp_path / "weird.json"
    ann_file.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match=r"weird\.json.*annotations"):
        CocoDetection(str(ann_file), str(tmp_path))
    ann_file.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match=r"weird\.json"):
        CocoDetection(str(ann_file), str(tmp_path))
    ann_file.write_text("{not json")
    with pytest.raises(ValueError, match=r"weird\.json.*not valid JSON"):
        CocoDetection(str(ann_file), str(tmp_path))


def test_unknown_category_names_annotation_and_image(make_coco):
    ann_file, img_dir = make_coco([(12, 10, 10)], [box_ann(345, 12, 99, (0, 0, 2, 2))], CATEGORIES)
    with pytest.raises(ValueError) as info:
        CocoDetection(ann_file, img_dir)
    message = str(info.value)
    assert ann_file in message and "annotation id 345" in message and "image id 12" in message and "99" in message


def test_nan_box_is_rejected(make_coco):
    ann_file, img_dir = make_coco([(12, 10, 10)], [box_ann(8, 12, 2, (0, math.nan, 2, 2))], CATEGORIES)
    with pytest.raises(ValueError, match=r"annotation id 8 \(image id 12\).*non-finite"):
        CocoDetection(ann_file, img_dir)


def test_missing_and_corrupt_images_name_file_and_id(make_coco):
    ann_file, img_dir = make_coco([(4, 10, 10), (6, 10, 10)], [], CATEGORIES)
    os.remove(os.path.join(img_dir, "4.png"))
    with open(os.path.join(img_dir, "6.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n this is not an image")
    dataset = CocoDetection(ann_file, img_dir)
    with pytest.raises(RuntimeError, match=r"4\.png.*image id 4"):
        dataset[0]
    with pytest.raises(RuntimeError, match=r"6\.png.*image id 6"):
        dataset[1]


def test_image_size_disagreeing_with_json_is_an_error(make_coco):
    ann_file, img_dir = make_coco([(1, 10, 10)], [], CATEGORIES)
    data = json.load(open(ann_file))
    data["images"][0]["height"] = 11
    with open(ann_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(RuntimeError, match=r"1\.png.*image id 1.*\(11, 10\)"):
        CocoDetection(ann_file, img_dir)[0]


def test_skip_mode_replaces_bad_images_and_counts(make_coco, caplog):
    ann_file, img_dir = make_coco([(1, 10, 10), (2, 12, 12), (3, 14, 14)], [], CATEGORIES)
    os.remove(os.path.join(img_dir, "2.png"))
    dataset = CocoDetection(ann_file, img_dir, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="detector.data"):
        image, target = dataset[1]
    assert target["image_id"] == 3 and image.shape == (3, 14, 14)
    assert dataset.num_skipped_images == 1
    assert any("2.png" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    dataset[0]
    assert dataset.num_skipped_images == 1
    os.remove(os.path.join(img_dir, "3.png"))
    assert dataset[1][1]["image_id"] == 1  # wraps around to the start
    assert dataset.num_skipped_images == 3


def test_bad_policy_is_rejected(make_coco):
    ann_file, img_dir = make_coco([(1, 10, 10)], [], CATEGORIES)
    with pytest.raises(ValueError, match="on_bad_image"):
        CocoDetection(ann_file, img_dir, on_bad_image="ignore")


def test_pycocotools_index_is_available(make_coco):
    ann_file, img_dir = make_coco([(1, 10, 10)], [box_ann(1, 1, 7, (0, 0, 2, 2))], CATEGORIES)
    coco = CocoDetection(ann_file, img_dir).coco
    assert sorted(coco.getCatIds()) == [2, 7, 40] and coco.getAnnIds(imgIds=[1]) == [1]


def test_dataset_with_transforms_pickles_for_spawned_workers(make_coco):
    import pickle

    ann_file, img_dir = make_coco([(1, 20, 30)], [box_ann(1, 1, 2, (3, 4, 5, 6))], CATEGORIES)
    dataset = CocoDetection(ann_file, img_dir, transforms=build_transforms(train=False, min_size=40, max_size=80))
    clone = pickle.loads(pickle.dumps(dataset))
    (image, target), (clone_image, clone_target) = dataset[0], clone[0]
    assert torch.equal(image, clone_image) and torch.equal(target["boxes"], clone_target["boxes"])
