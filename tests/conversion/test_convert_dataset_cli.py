"""tools/convert_dataset.py: what it writes and prints, exit code 1 with one error line for bad input, 2 for a
bad command line, never a traceback. Most cases call main(argv) in-process (the same code path as the
command, without a new Python process each); one of each kind runs as a subprocess, as a user sees it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT, save_image, voc_xml, write_text


def run_main(tool, capsys, *argv) -> tuple[int, str, str]:
    code = tool.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str, *names) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one error line:\n{err}"
    assert "Traceback" not in err
    for name in names:
        assert str(name) in err, f"{name!r} not in {err!r}"


def test_voc_command(tmp_path, convert_tool, capsys):
    save_image(tmp_path / "VOC" / "JPEGImages" / "a.jpg", 20, 10)
    write_text(tmp_path / "VOC" / "Annotations" / "a.xml",
               voc_xml("a.jpg", (20, 10), [{"name": "b", "box": (1, 1, 5, 5), "difficult": 1},
                                           {"name": "a", "box": (2, 2, 20, 10)}]))
    out = tmp_path / "out" / "voc.json"
    code, stdout, _ = run_main(convert_tool, capsys, "voc", tmp_path / "VOC" / "Annotations", "--out", out,
                               "--keep-difficult")
    assert code == 0
    assert stdout.splitlines() == [
        f"wrote {out}: 1 images (0 without boxes), 2 boxes, 0 ignore regions (iscrowd), 2 classes (ids 1..: a, b)",
        "  1 difficult boxes kept as ordinary boxes",
        f"image folder (data.*.img_dir): {tmp_path / 'VOC' / 'JPEGImages'}"]
    dataset = json.loads(out.read_text())
    assert [a["bbox"] for a in dataset["annotations"]] == [[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 19.0, 9.0]]
    assert [a["iscrowd"] for a in dataset["annotations"]] == [0, 0]


def test_coco_and_yolo_commands(tmp_path, convert_tool, capsys):
    save_image(tmp_path / "images" / "ö.png", 8, 4)
    ann_file = tmp_path / "in.json"
    ann_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "ö.png", "width": 8, "height": 4}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 1, 4, 2], "area": 8, "iscrowd": 0}],
        "categories": [{"id": 5, "name": "thing"}]}))
    code, stdout, _ = run_main(convert_tool, capsys, "coco", ann_file, "--out", tmp_path / "labels",
                               "--images", tmp_path / "images")
    assert code == 0 and stdout.startswith(f"wrote {tmp_path / 'labels'}: 1 label files (0 empty), 1 boxes")
    assert (tmp_path / "labels" / "ö.txt").read_text() == "0 0.5 0.5 0.5 0.5\n"
    # yolo without --classes takes the classes.txt the coco command wrote into the label folder.
    code, stdout, _ = run_main(convert_tool, capsys, "yolo", tmp_path / "labels", "--out", tmp_path / "back.json",
                               "--images", tmp_path / "images")
    assert code == 0, stdout
    back = json.loads((tmp_path / "back.json").read_text())
    assert back["annotations"][0]["bbox"] == [2.0, 1.0, 4.0, 2.0]
    assert back["categories"] == [{"id": 1, "name": "thing"}]
    assert "\\u00f6.png" in (tmp_path / "back.json").read_text()  # ASCII JSON, readable under any locale


def test_bad_input_exits_1_with_one_line(tmp_path, convert_tool, capsys):
    save_image(tmp_path / "y" / "a.png", 10, 10)
    label = write_text(tmp_path / "y" / "a.txt", "0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n")
    names = write_text(tmp_path / "names.txt", "only\n")
    code, _, err = run_main(convert_tool, capsys, "yolo", tmp_path / "y", "--out", tmp_path / "o.json",
                            "--classes", names)
    assert code == 1
    assert_one_error_line(err, f"{label}:2:", "class index 1 is out of range")
    assert not (tmp_path / "o.json").exists()

    code, _, err = run_main(convert_tool, capsys, "voc", tmp_path / "missing", "--out", tmp_path / "o.json")
    assert code == 1
    assert_one_error_line(err, "labels not found", tmp_path / "missing")

    (tmp_path / "bad.json").write_text('{"images": [], "annotations": [{"id": 1}], "categories": []}')
    code, _, err = run_main(convert_tool, capsys, "coco", tmp_path / "bad.json", "--out", tmp_path / "l")
    assert code == 1
    assert_one_error_line(err, "bad.json", "annotation id 1")


@pytest.mark.parametrize("argv,words", [
    (["yolo", "SRC", "--out", "o.json", "--keep-difficult"], "--keep-difficult applies to voc only"),
    (["coco", "in.json", "--out", "l", "--classes", "n.txt"], "drop --classes"),
    (["yolo", "SRC", "--out", "o.json"], "give the class names with --classes"),
    (["kitti", "SRC", "--out", "o.json"], "invalid choice: 'kitti'"),
    (["voc", "SRC"], "the following arguments are required: --out"),
])
def test_bad_command_line_exits_2(tmp_path, convert_tool, capsys, argv, words):
    (tmp_path / "SRC").mkdir()
    argv = [str(tmp_path / arg) if arg == "SRC" else arg for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        convert_tool.main(argv)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_as_a_user_runs_it(tmp_path):
    save_image(tmp_path / "a.png", 10, 10)
    label = write_text(tmp_path / "a.txt", "0 0.5 0.5 0.1\n")
    write_text(tmp_path / "classes.txt", "x\n")
    command = [sys.executable, str(ROOT / "tools" / "convert_dataset.py")]
    bad = subprocess.run(command + ["yolo", str(tmp_path), "--out", str(tmp_path / "o.json")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert bad.stderr == f"error: {label}:1: expected 5 values (class cx cy w h), got 4\n"
    usage = subprocess.run(command + ["yolo", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr and "--out" in usage.stderr
