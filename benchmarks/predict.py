"""Prediction on user images: Detector.predict against torchvision's RetinaNet, memory over a long stream, and what
batching the val set by padded shape saves.

``speed`` (default): images/s of ``Detector.predict`` against ``retinanet_resnet50_fpn`` called as its users call
it, ``model(list of [0, 1] float tensors)`` in chunks of the batch size: the same architecture and weights
(torchvision's model with randomised weights, FrozenBatchNorm2d as with its published weights, converted by
``detector/conversion/torchvision_retinanet.py``), the same test size (torchvision's ``min_size`` / ``max_size``,
focaldet's ``data.test_min_size`` / ``test_max_size``), score threshold 0.05, top 1000, NMS 0.5, 100 detections per
image (``detections_per_img=100``, a builder argument; torchvision's default keeps 300), the same list of float
images of mixed sizes. Each side resizes, normalises, batches, post-processes and maps boxes back to the input
images.

``--memory N``: N synthetic images of mixed sizes written as PNG files, streamed through the path tools/predict.py
takes (DataLoader workers decoding, batches of one padded shape, predictions.json written as it goes), with the
quick-start model (random weights, score threshold 0 so that each image writes 100 detections); the process's
resident memory is sampled every 100 images.

``--val-padding``: the quick-start val set (100 images of 192-256 px, test size 256) predicted in batches of 8 as
they come (each batch padded to its largest image: the old val loader) and in batches of one padded shape (the val
loader now): padded pixels and time.

    python benchmarks/predict.py --cpu-clock                     # 16 images of 240-640 px, test size 320 / 533
    python benchmarks/predict.py --cpu-clock --low 320 --high 320   # all 320 x 320: no padding on either side
    python benchmarks/predict.py --memory 1000
    python benchmarks/predict.py --val-padding --cpu-clock
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, clock_name, median, print_table, time_rotating, use_cpu_clock  # noqa: E402


def iter_mixed_images(num_images: int, low: int, high: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Smooth random [0, 1] images (3, H, W) with sides drawn uniformly in [low, high], one at a time."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(num_images):
        height, width = (int(v) for v in torch.randint(low, high + 1, (2,), generator=generator))
        coarse = torch.rand(1, 3, max(2, height // 16), max(2, width // 16), generator=generator)
        yield torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]


def mixed_images(num_images: int, low: int, high: int, seed: int = 0) -> list[torch.Tensor]:
    return list(iter_mixed_images(num_images, low, high, seed))


def frozen_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm2d by torchvision's FrozenBatchNorm2d (eps 0), as torchvision builds the model around
    its published COCO weights (overwrite_eps)."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=0.0)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key).detach())
                setattr(module, child_name, frozen)
    return model


def build_pair(min_size: int, max_size: int, work_dir: Path):
    """(torchvision model, focaldet Detector) with the same randomised weights and test size."""
    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights, retinanet_resnet50_fpn

    from detector.conversion.torchvision_retinanet import COCO_CATEGORY_IDS, convert_state_dict, torchvision_config
    from detector.predict import Detector
    from detector.predict.checkpoints import build_checkpoint_meta
    from detector.runtime.checkpoint import save_checkpoint

    torch.manual_seed(0)  # 100 detections per image, as focaldet's converted config keeps (torchvision's default: 300)
    tv_model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, min_size=min_size, max_size=max_size,
                                      detections_per_img=100)
    with torch.no_grad():  # statistics and biases as trained weights have them: detections above 0.05
        for module in tv_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        tv_model.head.classification_head.cls_logits.bias.uniform_(-6.0, -2.0)
    tv_model = frozen_batchnorm(tv_model).eval()
    converted, version = convert_state_dict(tv_model.state_dict(), "v1")
    cfg = torchvision_config(version)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_min_size=min_size, test_max_size=max_size))
    names = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    meta = build_checkpoint_meta(cfg, [names[i] for i in COCO_CATEGORY_IDS], list(COCO_CATEGORY_IDS))
    save_checkpoint(work_dir / "converted.pt", {"model": converted, "meta": meta})
    return tv_model, Detector.from_checkpoint(work_dir / "converted.pt", device="cpu")


def run(num_images: int = 16, low: int = 240, high: int = 640, min_size: int = 320, max_size: int = 533,
        batch: int = 4, repeats: int = 3, warmup: int = 1, verbose: bool = True) -> dict:
    """``{"focaldet": images/s, "torchvision": images/s, "speedup": ours / theirs, "detections": (ours, theirs)}``."""
    images = mixed_images(num_images, low, high)
    with tempfile.TemporaryDirectory() as tmp:
        tv_model, detector = build_pair(min_size, max_size, Path(tmp))

    def torchvision_predict():
        with torch.inference_mode():
            return [out for start in range(0, len(images), batch) for out in tv_model(images[start:start + batch])]

    def focaldet_predict():
        return detector.predict(images, batch_size=batch)

    times = time_rotating({"torchvision": torchvision_predict, "focaldet": focaldet_predict}, repeats, warmup)
    rates = {name: num_images / median(values) for name, values in times.items()}
    counts = (sum(len(r) for r in focaldet_predict()), sum(len(r["scores"]) for r in torchvision_predict()))
    result = {**rates, "speedup": rates["focaldet"] / rates["torchvision"], "detections": counts}
    if verbose:
        print(f"\n{num_images} images of {low}-{high} px, test size {min_size} / {max_size}, batch {batch}, "
              f"{clock_name()}, medians of {repeats}")
        print_table(["model", "images/s", "seconds", "detections"], [
            ["torchvision retinanet_resnet50_fpn", f"{rates['torchvision']:.3f}",
             f"{median(times['torchvision']):.2f}", counts[1]],
            ["focaldet Detector.predict", f"{rates['focaldet']:.3f}", f"{median(times['focaldet']):.2f}", counts[0]]])
        print(f"speed-up (focaldet / torchvision images per second): {result['speedup']:.3f}x")
    return result


def resident_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmRSS``) or its peak so far (``VmHWM``) from Linux /proc, in MB;
    elsewhere the peak from getrusage."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith(f"{field}:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quickstart_detector(work_dir: Path, opts: list[str]):
    """The quick-start RetinaNet with random weights, saved as a checkpoint with metadata, loaded as a Detector."""
    from detector.config import load_config
    from detector.models import build_model
    from detector.predict import Detector
    from detector.predict.checkpoints import build_checkpoint_meta
    from detector.runtime.checkpoint import save_checkpoint

    cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["runtime.channels_last=false", *opts])
    torch.manual_seed(0)
    meta = build_checkpoint_meta(cfg, [f"class_{i}" for i in range(cfg.model.num_classes)],
                                 list(range(1, cfg.model.num_classes + 1)))
    save_checkpoint(work_dir / "quickstart.pt", {"model": build_model(cfg).state_dict(), "meta": meta})
    return Detector.from_checkpoint(work_dir / "quickstart.pt", device="cpu")


def run_memory(num_images: int = 1000, low: int = 160, high: int = 320, batch: int = 8, workers: int = 2,
               every: int = 100, verbose: bool = True) -> dict:
    """Resident memory (MB) sampled every ``every`` images while ``num_images`` files stream through the
    tools/predict.py path; ``{"samples": [(images, MB)], "peak": MB, "summary": RunSummary}``."""
    from PIL import Image
    from torch.utils.data import DataLoader

    from detector.predict.image_files import ImageFiles, predict_files
    from detector.predict.streaming import identity

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths = []
        for index, image in enumerate(iter_mixed_images(num_images, low, high, seed=1)):
            paths.append(folder / f"{index:05d}.png")
            Image.fromarray((image * 255).byte().permute(1, 2, 0).numpy()).save(paths[-1])
        detector = quickstart_detector(Path(tmp), ["model.test.score_thr=0.0"])
        loader = DataLoader(ImageFiles(paths, detector.preparer, keep_original=False), batch_size=None,
                            num_workers=workers, collate_fn=identity)
        samples = []

        def sampled(items):
            for count, item in enumerate(items):
                if count % every == 0:
                    samples.append((count, resident_mb()))
                yield item
            samples.append((num_images, resident_mb()))

        summary = predict_files(detector, sampled(loader), [p.name for p in paths], Path(tmp) / "out", None, batch,
                                None, strict=False, progress=False)
    peak = resident_mb("VmHWM")
    if verbose:
        print(f"\n{num_images} PNG images of {low}-{high} px through the tools/predict.py path (quick-start "
              f"RetinaNet, test size 256, batch {batch}, {workers} workers, 100 detections per image written)")
        print_table(["images predicted", "resident memory (MB)"], [[count, f"{mb:.0f}"] for count, mb in samples])
        print(f"peak resident memory: {peak:.0f} MB; {summary.line(Path('predictions.json'))}")
    return {"samples": samples, "peak": peak, "summary": summary}


def run_val_padding(batch: int = 8, repeats: int = 2, verbose: bool = True) -> dict:
    """Padded pixels and time of the quick-start val set in batches as they come vs batches of one padded shape."""
    from torch.utils.data import DataLoader

    from detector.config import load_config
    from detector.data.build import build_val_loader, prepare_synthetic_data
    from detector.data.collate import DetectionCollator
    from detector.data.samplers import InferenceSampler
    from detector.evaluation import run_inference

    cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["runtime.channels_last=false", "data.num_workers=0",
                                                             f"data.test_batch_size={batch}"])
    prepare_synthetic_data(cfg)
    grouped = build_val_loader(cfg)
    plain = DataLoader(grouped.dataset, batch_size=batch, sampler=InferenceSampler(len(grouped.dataset)),
                       collate_fn=DetectionCollator(cfg.data.size_divisor))
    with tempfile.TemporaryDirectory() as tmp:
        model = quickstart_detector(Path(tmp), []).model
    loaders = {"as they come (padded to the batch's largest)": plain, "one padded shape per batch": grouped}
    pixels = {name: sum(images.shape[0] * images.shape[2] * images.shape[3] for images, _ in loader)
              for name, loader in loaders.items()}
    times = time_rotating({name: (lambda loader=loader: run_inference(model, loader, "cpu", progress=False))
                           for name, loader in loaders.items()}, repeats, warmup=1)
    rows = [[name, f"{pixels[name] / 1e6:.2f}", f"{median(times[name]):.2f}"] for name in loaders]
    if verbose:
        print(f"\nquick-start val set ({len(grouped.dataset)} images, test size 256), batch {batch}, random weights, "
              f"{clock_name()}, medians of {repeats} (decoding included)")
        print_table(["batches", "padded input pixels (M)", "seconds"], rows)
    return {"pixels": pixels, "seconds": {name: median(values) for name, values in times.items()}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--low", type=int, default=240, help="smallest image side (px)")
    parser.add_argument("--high", type=int, default=640, help="largest image side (px)")
    parser.add_argument("--min-size", type=int, default=320, help="test size: shorter side")
    parser.add_argument("--max-size", type=int, default=533, help="test size: longer side at most")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", type=int, metavar="N", help="stream N synthetic image files, sample memory")
    parser.add_argument("--val-padding", action="store_true", help="val batches as they come vs by padded shape")
    parser.add_argument("--cpu-clock", action="store_true", help="one thread, thread CPU time (a busy machine)")
    args = parser.parse_args(argv)
    use_cpu_clock(args.cpu_clock)
    if args.memory:
        return run_memory(args.memory)
    if args.val_padding:
        return run_val_padding(repeats=args.repeats)
    return run(args.images, args.low, args.high, min_size=args.min_size, max_size=args.max_size, batch=args.batch,
               repeats=args.repeats)


if __name__ == "__main__":
    main()
