"""LVISEvaluator (both backends), the NumPy 2 shim for lvis-api, columnar results I/O and shards.

The hand-made file: three images, categories "apple" (frequent), "bus" (common), "crab" (rare).
Image 1 has an apple and lists bus as negative; image 2 has a bus and a crab; image 3 has an apple and
lists apple as not exhaustively annotated.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from detector.evaluation import (
    LVISEvaluator,
    ResultsFormatError,
    format_metrics_table,
    load_results_columnar,
    merge_result_shards,
    write_results_shard,
)
from detector.evaluation.lvis_compat import import_lvis, patch_lvis_numpy

pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

BACKENDS = ("fast", "lvis-api")
HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
ONE = pytest.approx(1.0, abs=1e-12)  # precision is tp / (tp + fp + eps)

CATEGORIES = [
    {"id": 1, "name": "apple", "frequency": "f"},
    {"id": 4, "name": "bus", "frequency": "c"},
    {"id": 9, "name": "crab", "frequency": "r"},
]
IMAGES = [
    {"id": 1, "width": 300, "height": 200, "neg_category_ids": [4], "not_exhaustive_category_ids": []},
    {"id": 2, "width": 300, "height": 200, "neg_category_ids": [], "not_exhaustive_category_ids": []},
    {"id": 3, "width": 300, "height": 200, "neg_category_ids": [], "not_exhaustive_category_ids": [1]},
]
GT_BOXES = [  # (image_id, category_id, [x, y, w, h]); small, medium and large areas
    (1, 1, [10.0, 10.0, 50.0, 40.0]),
    (2, 4, [100.0, 50.0, 120.0, 100.0]),
    (2, 9, [5.0, 5.0, 20.0, 20.0]),
    (3, 1, [40.0, 60.0, 30.0, 30.0]),
]


def make_lvis_dict() -> dict:
    annotations = [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
         "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3]]]}
        for i, (img, cat, box) in enumerate(GT_BOXES)
    ]
    return copy.deepcopy({"images": IMAGES, "annotations": annotations, "categories": CATEGORIES})


def perfect_results() -> list[dict]:
    return [{"image_id": img, "category_id": cat, "bbox": list(box), "score": 0.9} for img, cat, box in GT_BOXES]


@pytest.fixture
def lvis_file(tmp_path):
    path = tmp_path / "lvis_gt.json"
    path.write_text(json.dumps(make_lvis_dict()))
    return path


# ---------------------------------------------------------------------------------------------- shim


def test_shim_lets_lvis_eval_run_end_to_end(lvis_file):
    """Acceptance: lvis.LVISEval.run() completes under the installed NumPy (2.x) through the shim."""
    lvis = import_lvis()
    lvis_eval = lvis.LVISEval(str(lvis_file), copy.deepcopy(perfect_results()), iou_type="bbox")
    lvis_eval.run()
    results = lvis_eval.get_results()
    for key in HEADLINE:
        assert results[key] == ONE, key
    assert not hasattr(np, "float"), "the shim must not alias np.float globally"


def test_shim_is_idempotent_and_scoped():
    lvis = import_lvis()
    assert patch_lvis_numpy() is False  # already patched
    assert import_lvis() is lvis
    assert lvis.eval.np.float is float
    assert lvis.eval.np.cumsum is np.cumsum  # everything else is the real numpy


_UNPATCHED = textwrap.dedent(
    """
    import json, logging, sys
    import numpy as np
    mode, gt_path, results = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if mode == "plain":
        import lvis
    else:
        from detector.evaluation.lvis_compat import import_lvis
        lvis = import_lvis()
        assert not logging.getLogger().handlers, "lvis' basicConfig reached the root logger"
    lvis_eval = lvis.LVISEval(gt_path, results, iou_type="bbox")
    try:
        lvis_eval.run()
    except AttributeError as error:
        print("AttributeError:", error)
        sys.exit(3)
    print("AP", lvis_eval.results["AP"])
    """
)


@pytest.mark.parametrize("mode", ["plain", "shim"])
def test_lvis_fails_without_the_shim_and_runs_with_it(mode, lvis_file):
    """Fresh interpreters: plain lvis fails on np.float under NumPy >= 1.24; through the shim it runs
    and leaves the root logger alone."""
    if mode == "plain" and hasattr(np, "float"):
        pytest.skip("this NumPy still has np.float")
    proc = subprocess.run(
        [sys.executable, "-c", _UNPATCHED, mode, str(lvis_file), json.dumps(perfect_results())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if mode == "plain":
        assert proc.returncode == 3 and "float" in proc.stdout, proc.stdout + proc.stderr
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert float(proc.stdout.split()[-1]) == ONE


# ----------------------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_give_one(backend, lvis_file):
    evaluator = LVISEvaluator(lvis_file, backend=backend)
    assert evaluator.image_ids == [1, 2, 3] and evaluator.cat_ids == [1, 4, 9]
    assert evaluator.class_names == ["apple", "bus", "crab"]
    assert evaluator.category_frequency == {1: "f", 4: "c", 9: "r"}
    metrics = evaluator.evaluate(perfect_results(), per_class=True)
    for key in (*HEADLINE, "AR300", "ARs", "ARm", "ARl"):
        assert metrics[key] == ONE, key
    assert metrics["per_class"] == {"apple": ONE, "bus": ONE, "crab": ONE}
    assert metrics["per_class_frequency"] == {"apple": "f", "bus": "c", "crab": "r"}
    assert "APr" in format_metrics_table(metrics)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lvis_rules_by_hand(backend, lvis_file):
    """Negative categories count, unlisted ones are dropped, not-exhaustive misses are ignored."""
    results = perfect_results()
    results[1]["score"] = results[2]["score"] = 0.5  # image 2's bus and crab
    results += [
        {"image_id": 1, "category_id": 4, "bbox": [200.0, 100.0, 50.0, 50.0], "score": 0.8},  # bus: negative in 1
        {"image_id": 1, "category_id": 9, "bbox": [200.0, 100.0, 50.0, 50.0], "score": 0.8},  # crab: dropped
        {"image_id": 3, "category_id": 1, "bbox": [200.0, 100.0, 50.0, 50.0], "score": 0.95},  # not exhaustive
    ]
    per_class = LVISEvaluator(lvis_file, backend=backend).evaluate(results, per_class=True)["per_class"]
    assert per_class["apple"] == ONE
    assert per_class["crab"] == ONE
    assert per_class["bus"] == pytest.approx(0.5, abs=1e-12)  # one FP ranked above the only TP


def test_backends_agree_and_match_lvis_eval_results(lvis_file):
    """APr/APc/APf (and every other metric) equal LVISEval's own results dict on the same file."""
    rng = np.random.default_rng(0)
    results = []
    for img, cat, (x, y, w, h) in GT_BOXES * 3:
        jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
        box = [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]]
        results.append({"image_id": img, "category_id": cat, "bbox": box, "score": float(rng.uniform())})
        results.append({"image_id": img, "category_id": 4, "bbox": box, "score": float(rng.uniform())})
    lvis = import_lvis()
    reference = lvis.LVISEval(str(lvis_file), copy.deepcopy(results), iou_type="bbox")
    reference.run()
    expected = {key.split("@")[0]: float(value) for key, value in reference.results.items()}
    expected["AR300"] = expected.pop("AR")
    for backend in BACKENDS:
        metrics = LVISEvaluator(lvis_file, backend=backend).evaluate(results, per_class=True)
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, abs=1e-9), (backend, key)
    assert 0 < expected["AP"] < 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_results_give_zeros_with_a_warning(backend, lvis_file, caplog):
    evaluator = LVISEvaluator(lvis_file, backend=backend)
    with caplog.at_level(logging.WARNING):
        metrics = evaluator.evaluate([], per_class=True)
    assert "no detections" in caplog.text
    for key in (*HEADLINE, "AR300"):
        assert metrics[key] == 0.0, key
    assert metrics["per_class"] == {"apple": 0.0, "bus": 0.0, "crab": 0.0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_columnar_input_and_unknown_ids(backend, lvis_file, caplog):
    evaluator = LVISEvaluator(lvis_file, max_dets=2, backend=backend)
    results = perfect_results()
    # Image 1: an unknown category with the top score takes one of the 2 slots, then is ignored;
    # the bus (negative) false positive takes the other, so the apple is cut.  Image 99 is unknown.
    results += [
        {"image_id": 1, "category_id": 77, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.99},
        {"image_id": 1, "category_id": 4, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.95},
        {"image_id": 99, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5},
    ]
    with caplog.at_level(logging.WARNING):
        from_dicts = evaluator.evaluate(results, per_class=True)
    assert "[99]" in caplog.text and "[77]" in caplog.text
    columnar = {
        "image_id": np.array([r["image_id"] for r in results]),
        "category_id": np.array([r["category_id"] for r in results]),
        "bbox": np.array([r["bbox"] for r in results]),
        "score": np.array([r["score"] for r in results]),
    }
    assert evaluator.evaluate(columnar, per_class=True) == from_dicts
    # 1 of 2 apples found, at precision 1: recall points 0.00..0.50 (51 of 101) read 1, the rest 0.
    assert from_dicts["per_class"]["apple"] == pytest.approx(51 / 101, abs=1e-12)
    assert from_dicts["AR2"] == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-12)


def test_bad_arguments(tmp_path, lvis_file):
    with pytest.raises(ValueError, match="backend"):
        LVISEvaluator(lvis_file, backend="slow")
    with pytest.raises(ValueError, match="max_dets"):
        LVISEvaluator(lvis_file, max_dets=0)
    with pytest.raises(FileNotFoundError):
        LVISEvaluator(tmp_path / "missing.json")
    coco_like = make_lvis_dict()
    for image in coco_like["images"]:
        del image["neg_category_ids"]
    (tmp_path / "coco.json").write_text(json.dumps(coco_like))
    with pytest.raises(ValueError, match="neg_category_ids"):
        LVISEvaluator(tmp_path / "coco.json")
    with pytest.raises(ValueError, match="image_id, category_id, bbox and score"):
        LVISEvaluator(lvis_file).evaluate([{"image_id": 1}])


# ------------------------------------------------------------------------------------- columnar I/O


def _random_results(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"image_id": int(rng.integers(1, 4)), "category_id": int(rng.choice([1, 4, 9])),
         "bbox": [round(float(v), 2) for v in rng.uniform(0, 100, 4)], "score": float(rng.uniform())}
        for _ in range(n)
    ]


def _assert_columns_equal(columns: dict, results: list[dict]) -> None:
    assert columns["image_id"].tolist() == [r["image_id"] for r in results]
    assert columns["category_id"].tolist() == [r["category_id"] for r in results]
    assert columns["bbox"].tolist() == [r["bbox"] for r in results]
    assert columns["score"].tolist() == [r["score"] for r in results]
    assert columns["image_id"].dtype == np.int64 and columns["bbox"].dtype == np.float64


@pytest.mark.parametrize("chunk_chars", [37, 64, 1000, 1 << 24])
@pytest.mark.parametrize("indent", [None, 2])
def test_load_results_columnar_round_trip(tmp_path, chunk_chars, indent):
    results = _random_results(120)
    results[5]["segmentation"] = {"size": [10, 10], "counts": "a}b{c"}  # nested object, braces in a string
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results, indent=indent))
    _assert_columns_equal(load_results_columnar(path, chunk_chars=chunk_chars), results)


@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")])
def test_canonical_fast_path_is_exact(tmp_path, monkeypatch, separators):
    """json.dump's flat layout (any key order) is parsed without json.loads, to the same floats."""
    from detector.evaluation import columnar

    def no_json_path(*args):
        raise AssertionError("the canonical layout fell back to the json path")

    rng = np.random.default_rng(1)
    results = _random_results(300)
    for r in results[::3]:
        r["score"] = float(rng.uniform() * 10.0 ** rng.integers(-12, 0))  # exponents: 1e-07, ...
        r["bbox"] = [float(v) for v in rng.standard_normal(4) * 1e3]  # 17 significant digits
    results[1]["bbox"] = [1, 2, 3, 4]  # integers
    path = tmp_path / "results.json"
    reordered = [{key: r[key] for key in ("score", "bbox", "category_id", "image_id")} for r in results]
    monkeypatch.setattr(columnar, "_chunk_to_columns", no_json_path)
    for layout in (results, reordered):
        path.write_text(json.dumps(layout, separators=separators))
        for chunk_chars in (300, 1 << 20):
            _assert_columns_equal(load_results_columnar(path, chunk_chars=chunk_chars), results)


def test_mixed_layouts_fall_back_to_json(tmp_path):
    results = _random_results(40)
    results[7] = {"score": 0.5, "bbox": [1.5, 2.0, 3.0, 4.0], "category_id": 4, "image_id": 2}  # key order
    results[9]["extra"] = [1, {"a": "}"}]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    for chunk_chars in (50, 1 << 20):
        _assert_columns_equal(load_results_columnar(path, chunk_chars=chunk_chars), results)


def test_load_results_columnar_empty_and_errors(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(" [ ] ")
    assert len(load_results_columnar(path)["score"]) == 0
    cases = {
        '{"image_id": 1}': "expected a JSON list",
        '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}': "not closed",
        '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}, ]': "not valid JSON",
        '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}, {"image_id": x}]': "not valid JSON",
        '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}, {"image_id": 2}]': "entry 1",
        '[{"image_id": 1.5, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]': "entry 0",
        '[{"image_id": 1.0, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]': "entry 0",
        '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5 1}]': "not valid JSON",
        '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": true}]': "entry 0",
        '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}]': "bbox",
    }
    for text, message in cases.items():
        path.write_text(text)
        for chunk_chars in (16, 1 << 20):
            with pytest.raises(ResultsFormatError, match=message):
                load_results_columnar(path, chunk_chars=chunk_chars)
    path.write_text(json.dumps(_random_results(5)))
    with pytest.raises(ResultsFormatError, match="image_id"):
        load_results_columnar(path, image_ids=[1])
    with pytest.raises(FileNotFoundError):
        load_results_columnar(tmp_path / "missing.json")


def test_result_shards_merge_in_order(tmp_path, lvis_file):
    results = _random_results(50)
    parts = [results[:20], [], results[20:]]
    paths = [write_results_shard(tmp_path / f"shard_{rank}.npz", part) for rank, part in enumerate(parts)]
    merged = merge_result_shards(paths)
    _assert_columns_equal(merged, results)
    evaluator = LVISEvaluator(lvis_file)
    assert evaluator.evaluate(merged) == evaluator.evaluate(results)
    np.savez(tmp_path / "bad.npz", score=np.zeros(3))
    with pytest.raises(ValueError, match="lacks"):
        merge_result_shards([tmp_path / "bad.npz"])
