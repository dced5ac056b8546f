"""Convert dataset labels: Pascal VOC XML or YOLO txt into COCO JSON, and COCO JSON into YOLO txt.

    python tools/convert_dataset.py voc VOCdevkit/VOC2007/Annotations --out data/voc07/all.json
    python tools/convert_dataset.py voc VOCdevkit/VOC2007/ImageSets/Main/trainval.txt --out data/voc07/trainval.json
    python tools/convert_dataset.py voc my_photos/ --out my_photos/annotations.json --classes classes.txt
    python tools/convert_dataset.py yolo datasets/pets/labels/train --out pets_train.json --classes pets.yaml
    python tools/convert_dataset.py coco annotations.json --out yolo_labels/ [--images IMAGE_DIR]

voc / yolo: SRC is a folder of label files (searched recursively) or one label file (for voc also a VOC split
list, ImageSets/Main/*.txt). The COCO file's file_names are relative to the image folder, printed at the end:
use it as data.train.img_dir / data.val.img_dir. --images sets it; the default is the devkit's JPEGImages/
beside Annotations/ (voc), the labels/ folder with "labels" replaced by "images" (yolo), else the label folder
itself. Sizes missing from the labels are read from the image headers, as displayed (EXIF orientation
applied; --no-exif-orientation: the stored pixel grid). --classes: one name per line, or a data YAML with
names: (yolo: default classes.txt or data.yaml in the label folder; voc: default the names found, sorted).
Category ids are 1..K in class order. VOC difficult boxes become iscrowd ignore regions unless
--keep-difficult. coco: SRC is a COCO JSON; writes one .txt per image (empty for images without boxes),
classes.txt and data.yaml into the --out folder; --images checks the images' sizes against the JSON.
The conventions (coordinates, tolerances, exact round trips) are in the docstrings of detector/conversion/.

Exit status: 0 done; 1 for bad input (the one error line names the file and line, or the entry);
2 for a bad command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector.cli.args import interruptible
from detector.conversion.dataset_files import ConversionError, read_class_names
from detector.conversion.yolo import default_names_file


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=("voc", "yolo", "coco"), help="the format of SRC")
    parser.add_argument("src", type=Path, metavar="SRC", help="label folder or file (voc, yolo), or a COCO JSON (coco)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT",
                        help="the COCO JSON to write (voc, yolo), or the YOLO label folder to write (coco)")
    parser.add_argument("--images", type=Path, metavar="DIR", help="the image folder (default: see above)")
    parser.add_argument("--classes", type=Path, metavar="NAMES",
                        help="class names: one per line, or a data YAML with names: (voc, yolo)")
    parser.add_argument("--keep-difficult", action="store_true",
                        help="voc: keep difficult boxes as ordinary boxes instead of iscrowd ignore regions")
    parser.add_argument("--no-exif-orientation", action="store_true",
                        help="sizes read from images are the stored pixel grid, not the EXIF-rotated view")
    args = parser.parse_args(argv)
    if args.keep_difficult and args.format != "voc":
        parser.error("--keep-difficult applies to voc only")
    if args.format == "coco" and args.classes is not None:
        parser.error("coco: the class names come from the JSON's categories; drop --classes")
    if args.format == "yolo" and args.classes is None:
        args.classes = default_names_file(args.src)
        if args.classes is None:
            parser.error(f"yolo: give the class names with --classes NAMES.txt or DATA.yaml (no classes.txt or "
                         f"data.yaml in {args.src})")
    return args


def convert(args: argparse.Namespace) -> list[str]:
    """Run the conversion; return the lines to print."""
    from detector.conversion.coco_json import write_coco_json
    from detector.conversion.voc import voc_to_coco
    from detector.conversion.yolo import coco_to_yolo, yolo_to_coco

    exif = not args.no_exif_orientation
    if args.format == "coco":
        export = coco_to_yolo(args.src, args.out, images=args.images, exif_orientation=exif)
        return [f"wrote {export.label_dir}: {export.summary}", *(f"  {note}" for note in export.notes),
                f"class names: {export.names_file} and {export.data_yaml}"]
    class_names = read_class_names(args.classes) if args.classes is not None else None
    if args.format == "voc":
        result = voc_to_coco(args.src, images=args.images, class_names=class_names,
                             keep_difficult=args.keep_difficult, exif_orientation=exif)
    else:
        result = yolo_to_coco(args.src, class_names, images=args.images, names_file=args.classes,
                              exif_orientation=exif)
    write_coco_json(result.dataset, args.out)
    return [f"wrote {args.out}: {result.summary}", *(f"  {note}" for note in result.notes),
            f"image folder (data.*.img_dir): {result.images_root}"]


@interruptible
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        lines = convert(args)
    except (ConversionError, ValueError, OSError) as err:
        # Bad labels, names or images: the message names the file and line (or the JSON entry).
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
