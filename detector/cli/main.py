"""``focaldet COMMAND ...``: the console entry point of an installed focaldet (``[project.scripts]``).

    focaldet train configs/quickstart.yaml            (or a packaged config by name: focaldet train quickstart)
    focaldet eval CHECKPOINT
    focaldet predict CHECKPOINT photos/ --out-dir predictions/
    focaldet export CHECKPOINT --format onnx --out model.onnx
    focaldet publish CHECKPOINT OUT
    focaldet convert {voc,yolo,coco} SRC --out OUT

Each command is the module detector/cli/<command>.py, also run as ``python tools/<script>.py`` in a clone; the
command's module is imported only when it is chosen, and parses its arguments before importing torch, so
``focaldet COMMAND --help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module under detector.cli, one-line summary)
COMMANDS = {
    "train": ("train", "train a detector from a YAML config"),
    "eval": ("eval", "evaluate a checkpoint (or a results JSON) on the config's val set"),
    "predict": ("predict", "run a trained detector on image files and folders"),
    "export": ("export", "export a checkpoint to ONNX or TorchScript, NMS inside the graph"),
    "publish": ("publish", "keep a checkpoint's weights and metadata only"),
    "convert": ("convert", "convert VOC XML / YOLO txt labels to COCO JSON, or COCO JSON to YOLO"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "usage: focaldet COMMAND [ARGS ...]   (focaldet COMMAND --help for its arguments)\n\ncommands:\n" + \
        "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from detector.version import __version__
        print(f"focaldet {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"{usage()}\n\nerror: unknown command {command!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"detector.cli.{COMMANDS[command][0]}")
    sys.argv[0] = f"focaldet {command}"  # argparse names the program after it in usage lines and errors
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
