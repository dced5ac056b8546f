"""Images per second through the training loader, by decoder and number of workers, against the step it feeds.

A synthetic COCO-format JPEG dataset (``--images`` images with sides in [0.75, 1] x ``--size`` px, quality 95)
is generated once under ``--work-dir``. The loader is the training one, ``build_train_loader`` (the dataset,
the seeded train transforms: resize the shorter side to ``--size``, random flip, normalise; the grouped
batch sampler and the padding collate), with 0, 1 and 2 worker processes and two JPEG decoders:

* ``torchvision.io``: ``decode_image(read_file(path))``, what ``CocoDetection.load_image`` does;
* ``PIL``: ``Image.open(path).convert("RGB")`` into a uint8 tensor, swapped in on the dataset instance.

Throughput is decoded + transformed + collated images per wall second over the batches after the first
(worker start-up excluded). The pixels the two decoders give are compared on every image (both use
libjpeg-turbo; a difference would come from its DCT / upsampling options). The loader keeps up when its
rate exceeds the images per second of a RetinaNet R50-FPN training step at the same size and batch
(passed in, or measured with ``--measure-step``).

    python benchmarks/data_loading.py                   # 200 images at 640 px, batch 2, 0 / 1 / 2 workers
    python benchmarks/data_loading.py --measure-step
"""

from __future__ import annotations

import argparse
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, print_table  # noqa: E402


def ensure_jpeg_dataset(work_dir: Path, num_images: int, size: int) -> dict:
    from detector.data.synthetic import ensure_synthetic_coco

    return ensure_synthetic_coco(str(work_dir / f"jpeg_{num_images}_{size}"), num_train=num_images, num_val=1,
                                 image_size=size, num_classes=1, max_object_size=size // 2, max_objects=6,
                                 image_format="jpg")


def pil_decode(path: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()  # (3, H, W)


def _pil_load_image(self, index: int) -> torch.Tensor:
    return pil_decode(self.image_path(index))


def build_loader(paths: dict, size: int, batch: int, workers: int, decoder: str):
    from detector.config import load_config
    from detector.data.build import build_train_loader

    cfg = load_config(str(ROOT / "configs/quickstart.yaml"), [
        f"data.train.ann_file={paths['train_ann_file']}", f"data.train.img_dir={paths['train_img_dir']}",
        "data.synthetic.enabled=false", f"data.min_size=[{size}]", f"data.max_size={size}",
        f"data.batch_size={batch}", f"data.num_workers={workers}", "model.num_classes=1"])
    loader, sampler = build_train_loader(cfg)
    if decoder == "PIL":  # on the instance, before the workers fork
        dataset = loader.dataset.dataset
        dataset.load_image = types.MethodType(_pil_load_image, dataset)
    return loader, sampler


def loader_rate(paths: dict, size: int, batch: int, workers: int, decoder: str, max_batches: int) -> float:
    """Images per wall second over the batches after the first."""
    loader, sampler = build_loader(paths, size, batch, workers, decoder)
    sampler.set_epoch(0)
    count, start = 0, None
    for i, (images, _targets) in enumerate(loader):
        if i == 0:
            start = time.perf_counter()
            continue
        count += images.shape[0]
        if i >= max_batches:
            break
    elapsed = time.perf_counter() - start if start is not None else 0.0
    del loader
    if count == 0:
        raise ValueError(f"{len(sampler)} batch(es) of {batch}: need at least 2 (the first is not timed)")
    return count / elapsed


def compare_pixels(paths: dict, limit: int) -> tuple[int, int]:
    """(images with any differing pixel, max |difference|) between the two decoders."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")  # 0.29's notice
    files = sorted(Path(paths["train_img_dir"]).glob("*.jpg"))[:limit]
    differing, worst = 0, 0
    for path in files:
        a = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        b = pil_decode(str(path))
        diff = int((a.int() - b.int()).abs().max())
        differing += diff > 0
        worst = max(worst, diff)
    return differing, worst


def decode_cpu_ms(paths: dict, limit: int, passes: int = 3) -> dict[str, float]:
    """Median over ``passes`` of the thread CPU ms per image spent decoding alone, by decoder (robust to
    other processes on the machine, unlike the loader rates)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    files = [str(p) for p in sorted(Path(paths["train_img_dir"]).glob("*.jpg"))[:limit]]
    decoders = {"torchvision.io": lambda f: decode_image(read_file(f), mode=ImageReadMode.RGB), "PIL": pil_decode}
    out = {}
    for name, decode in decoders.items():
        samples = []
        for _ in range(passes):
            start = time.thread_time()
            for f in files:
                decode(f)
            samples.append(1e3 * (time.thread_time() - start) / len(files))
        out[name] = sorted(samples)[len(samples) // 2]
    return out


def measure_step_rate(size: int, batch: int, repeats: int = 2) -> float:
    from benchmarks.train_step import run as train_step_run

    res = train_step_run(size=size, batch=batch, boxes=6, repeats=repeats, detectors=["retinanet"],
                         inference=False, torchvision_model=False, verbose=False)
    return batch / res["train step"]["focaldet retinanet"]


def run(images: int = 200, size: int = 640, batch: int = 2, workers=(0, 1, 2), decoders=("torchvision.io", "PIL"),
        max_batches: int | None = None, step_images_per_s: float | None = None, measure_step: bool = False,
        work_dir: str = "work_dirs/bench_data", verbose: bool = True) -> dict:
    paths = ensure_jpeg_dataset(Path(work_dir), images, size)
    max_batches = max_batches or images // batch - 1
    rates = {(d, w): loader_rate(paths, size, batch, w, d, max_batches) for d in decoders for w in workers}
    differing, worst = compare_pixels(paths, images)
    with torch.inference_mode():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        decode_ms = decode_cpu_ms(paths, images)
        torch.set_num_threads(threads)
    if measure_step and step_images_per_s is None:
        step_images_per_s = measure_step_rate(size, batch)
    keeps_up = {key: (rate >= step_images_per_s if step_images_per_s else None) for key, rate in rates.items()}
    if verbose:
        print(f"training loader: {images} JPEG images, shorter side -> {size} px, batch {batch}, "
              f"{torch.get_num_threads()} torch threads in the main process; wall clock")
        step = f"{step_images_per_s:.2f}" if step_images_per_s else "-"
        print_table(["decoder", "workers", "images/s", "RetinaNet R50 step images/s", "keeps up"],
                    [[d, w, f"{rates[(d, w)]:.1f}", step, {None: "-", True: "yes", False: "NO"}[keeps_up[(d, w)]]]
                     for d in decoders for w in workers])
        print(f"pixels: {differing} of {images} images differ between the decoders (max |diff| {worst}); "
              "decoding alone, thread CPU ms per image: "
              + ", ".join(f"{name} {ms:.2f}" for name, ms in decode_ms.items()))
    return {"rates": {f"{d}/{w}": r for (d, w), r in rates.items()}, "step_images_per_s": step_images_per_s,
            "keeps_up": all(v for v in keeps_up.values() if v is not None) if step_images_per_s else None,
            "pixels_differing": differing, "max_pixel_diff": worst, "decode_cpu_ms": decode_ms}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--step-images-per-s", type=float, default=None, help="the training step's rate")
    parser.add_argument("--measure-step", action="store_true", help="time a RetinaNet R50 step for the rate")
    parser.add_argument("--work-dir", default="work_dirs/bench_data")
    args = parser.parse_args(argv)
    return run(args.images, args.size, args.batch, args.workers, step_images_per_s=args.step_images_per_s,
               measure_step=args.measure_step, work_dir=args.work_dir)


if __name__ == "__main__":
    main()
