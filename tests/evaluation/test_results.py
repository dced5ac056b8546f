"""detections_to_coco_results, save_results and load_results."""

from __future__ import annotations

import json

import pytest
import torch

from detector.evaluation import (
    ResultsFormatError,
    detections_to_coco_results,
    load_results,
    save_results,
)


def _detections(boxes, scores, labels) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def test_xyxy_to_xywh_and_non_contiguous_category_ids():
    detections = [
        _detections([[10, 20, 30, 60], [0, 0, 5, 5]], [0.9, 0.5], [0, 2]),
        _detections([], [], []),
        _detections([[1.5, 2.5, 11.5, 4.0]], [0.25], [1]),
    ]
    results = detections_to_coco_results(detections, image_ids=[11, 12, 13], label_to_cat_id=[1, 3, 7])
    assert results == [
        {"image_id": 11, "category_id": 1, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.8999999761581421},
        {"image_id": 11, "category_id": 7, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5},
        {"image_id": 13, "category_id": 3, "bbox": [1.5, 2.5, 10.0, 1.5], "score": 0.25},
    ]
    # Plain Python types: JSON-serialisable as is.
    assert all(type(r["image_id"]) is int and type(r["category_id"]) is int for r in results)
    assert all(type(v) is float for r in results for v in [*r["bbox"], r["score"]])
    json.dumps(results)


def test_boxes_are_rounded_to_two_decimals():
    detections = [_detections([[10.123456, 20.987654, 30.5, 40.004]], [1.0], [0])]
    (result,) = detections_to_coco_results(detections, [5], [2])
    assert result["bbox"] == [10.12, 20.99, 20.38, 19.02]


def test_accepts_tensor_image_ids_and_low_precision_dtypes():
    detections = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 2.0, 4.0]], dtype=torch.float16),
            "scores": torch.tensor([0.75], dtype=torch.bfloat16),
            "labels": torch.tensor([0], dtype=torch.int32),
        }
    ]
    (result,) = detections_to_coco_results(detections, [torch.tensor(4)], [9])
    assert result == {"image_id": 4, "category_id": 9, "bbox": [0.0, 0.0, 2.0, 4.0], "score": 0.75}


def test_label_without_category_id_raises():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        detections_to_coco_results([_detections([[0, 0, 1, 1]], [1.0], [2])], [1], [1, 3])


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 detection dicts but 1 image ids"):
        detections_to_coco_results([_detections([], [], [])] * 2, [1], [1])


def test_save_load_round_trip_creates_parent(tmp_path):
    results = [{"image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}]
    path = save_results(tmp_path / "deep" / "dir" / "results.json", results)
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    assert load_results(path, image_ids=[1, 2], cat_ids={3}) == results


def test_empty_list_is_valid(tmp_path):
    path = save_results(tmp_path / "empty.json", [])
    assert load_results(path, image_ids=[1], cat_ids=[1]) == []


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_results(path)


def test_invalid_json_names_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"image_id": 1,')
    with pytest.raises(ResultsFormatError, match="broken.json.*not valid JSON"):
        load_results(path)


def test_top_level_not_a_list(tmp_path):
    path = tmp_path / "dict.json"
    path.write_text('{"annotations": []}')
    with pytest.raises(ResultsFormatError, match="dict.json.*top level is a JSON dict"):
        load_results(path)


@pytest.mark.parametrize("missing", ["image_id", "category_id", "bbox", "score"])
def test_entry_missing_key(tmp_path, missing):
    entry = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.1}
    del entry[missing]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}, entry]))
    with pytest.raises(ResultsFormatError, match=f"partial.json: entry 1 is missing {missing}"):
        load_results(path)


def test_malformed_bbox(tmp_path):
    path = tmp_path / "bad_box.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1}]))
    with pytest.raises(ResultsFormatError, match="bad_box.json: entry 0 has bbox"):
        load_results(path)


def test_unknown_image_id_is_named(tmp_path):
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0},
        {"image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0},
    ]
    path = save_results(tmp_path / "r.json", results)
    with pytest.raises(ResultsFormatError, match=r"r.json: image_id \[42\] not in the ground truth"):
        load_results(path, image_ids=[1, 2, 3], cat_ids=[1])


def test_unknown_category_id_is_named(tmp_path):
    results = [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1.0}]
    path = save_results(tmp_path / "r.json", results)
    with pytest.raises(ResultsFormatError, match=r"r.json: category_id \[5\] not in the categories"):
        load_results(path, image_ids=[1], cat_ids=[1, 3, 7])


def test_many_unknown_ids_are_summarised(tmp_path):
    results = [{"image_id": i, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0} for i in range(100, 115)]
    path = save_results(tmp_path / "r.json", results)
    with pytest.raises(ResultsFormatError, match=r"\[100, 101, .*109, \.\.\. and 5 more\]"):
        load_results(path, image_ids=[1])


def _entries(count: int) -> list[dict]:
    return [{"image_id": 1 + i % 3, "category_id": 2, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5 + i / 1000}
            for i in range(count)]


@pytest.mark.parametrize("loader", ["load_results", "load_results_columnar"])
@pytest.mark.parametrize("key, value, expected", [
    ("score", True, "has score True, expected a finite number"),
    ("score", False, "has score False, expected a finite number"),
    ("image_id", True, "has image_id True, expected an integer"),
    ("category_id", False, "has category_id False, expected an integer"),
    ("bbox", [1.0, True, 3.0, 4.0], "has bbox [1.0, True, 3.0, 4.0], expected a list of 4 numbers"),
])
def test_json_booleans_are_not_numbers_in_either_loader(tmp_path, loader, key, value, expected):
    """numpy would read [true, 0.5] as [1.0, 0.5]: a boolean among numbers is named like any other bad entry,
    in the COCO loader, the columnar (LVIS) loader, in the first chunk or a later one."""
    from detector.evaluation import load_results_columnar

    load = load_results if loader == "load_results" else \
        (lambda path: load_results_columnar(path, chunk_chars=2000))  # ~25 entries per chunk
    for position in (3, 130):
        entries = _entries(200)
        entries[position][key] = value
        path = tmp_path / "dets.json"
        path.write_text(json.dumps(entries))
        with pytest.raises(ResultsFormatError) as info:
            load(path)
        assert str(info.value).startswith(f"results file {path}: entry {position} {expected}")
    path.write_text(json.dumps(_entries(200)))
    assert len(load(path)["score"] if loader != "load_results" else load(path)) == 200
