"""Datasets and loaders from the ``data`` section of a config (the data side's only config reader).

``data.batch_size`` is the batch of one optimiser step over all processes; each process loads
``batch_size / world_size`` images. Training batches come from a GroupedBatchSampler (aspect-ratio grouped,
sharded per rank, reshuffled every epoch) that pairs every index with a per-sample seed, and the train set is
wrapped in a SeededDataset, so each sample's augmentation depends only on (runtime.seed, epoch, position in
the epoch): not on the number of workers, the resume point or the number of processes. Evaluation shards the
val set without duplicates and batches images of one padded shape together. Loader workers ignore SIGTERM /
SIGINT / SIGHUP: a cluster signals the whole process group, and the main process, which finishes its step and
checkpoints, needs its workers meanwhile.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from detector.config_schema import Config, DatasetConfig
from detector.data.augment import IoUCrop, RandomAreaCrop, large_scale_jitter
from detector.data.coco import CocoDetection
from detector.data.collate import DetectionCollator
from detector.data.lvis import LVISDetection
from detector.data.repeat_factor import repeat_factors
from detector.data.inference_batches import ShapeGroupedBatchSampler, padded_shape
from detector.data.samplers import GroupedBatchSampler
from detector.data.seeded import SeededDataset
from detector.data.synthetic import ensure_synthetic_coco
from detector.data.synthetic_lvis import ensure_synthetic_lvis
from detector.data.transforms import DetectionTransform, build_transforms
from detector.runtime.seeding import make_generator, make_worker_init_fn
from detector.runtime.signals import worker_init_ignoring_stop_signals

logger = logging.getLogger(__name__)


def prepare_synthetic_data(cfg: Config) -> None:
    """Generate the synthetic dataset a config asks for when it is missing (call on the main process).

    The COCO-format generator writes ``<root>/annotations/instances_{train,val}.json`` and
    ``<root>/{train,val}/``, the LVIS-format one ``<root>/annotations/lvis_v1_{train,val}.json`` and
    ``<root>/{train,val}2017/``; the config's ``data.train`` / ``data.val`` paths name those files.
    """
    syn = cfg.data.synthetic
    if not syn.enabled:
        return
    common = dict(num_train=syn.num_train, num_val=syn.num_val, image_size=syn.image_size,
                  num_classes=syn.num_classes, min_object_size=syn.min_object_size,
                  max_object_size=syn.max_object_size, max_objects=syn.max_objects, seed=syn.seed)
    if syn.format == "lvis":
        ensure_synthetic_lvis(syn.root, num_rare=syn.num_rare, num_common=syn.num_common,
                              head_images=syn.head_images, **common)
    else:
        ensure_synthetic_coco(syn.root, **common)


DATASETS = {"coco": CocoDetection, "lvis": LVISDetection}


def build_transforms_for(cfg: Config, split: str) -> DetectionTransform:
    """The ``train`` transforms (multi-scale resize as ``data.min_size_sampling`` says, flip, ``data.augment``)
    or the ``val`` ones (resize only)."""
    data = cfg.data
    if split != "train":
        return build_transforms(train=False, min_size=data.test_min_size, max_size=data.test_max_size,
                                flip_prob=data.flip_prob, mean=data.mean, std=data.std)
    aug = data.augment
    before_resize: list[v2.Transform] = []
    if aug.photometric.prob > 0:
        photo = aug.photometric
        before_resize.append(v2.RandomApply([v2.ColorJitter(photo.brightness, photo.contrast, photo.saturation,
                                                            photo.hue)], p=photo.prob))
    if aug.iou_crop.prob > 0:
        crop = aug.iou_crop
        before_resize.append(IoUCrop(crop.prob, crop.min_scale, crop.max_scale, crop.min_aspect_ratio,
                                     crop.max_aspect_ratio, crop.min_ious, crop.trials))
    if aug.random_resized_crop.prob > 0:
        area = aug.random_resized_crop
        before_resize.append(RandomAreaCrop(area.prob, area.scale, area.ratio))
    jitter = None
    if aug.scale_jitter.prob > 0:
        size = aug.scale_jitter.size or [data.max_size, data.max_size]
        jitter = (aug.scale_jitter.prob, large_scale_jitter(size, aug.scale_jitter.scale_range, data.mean))
    return build_transforms(train=True, min_size=data.min_size, max_size=data.max_size, flip_prob=data.flip_prob,
                            mean=data.mean, std=data.std, min_size_sampling=data.min_size_sampling,
                            before_resize=before_resize, jitter=jitter,
                            min_box_size=aug.min_box_size if aug.crops else None)


def build_dataset(cfg: Config, split: str) -> CocoDetection | LVISDetection:
    """The ``train`` or ``val`` dataset with its transforms."""
    dataset_cfg: DatasetConfig = getattr(cfg.data, split)
    data = cfg.data
    transforms = build_transforms_for(cfg, split)
    ann_file, img_dir = dataset_cfg.ann_file, dataset_cfg.img_dir
    dataset = DATASETS[dataset_cfg.format](ann_file, img_dir, transforms=transforms,
                                           filter_empty=dataset_cfg.filter_empty, on_bad_image=data.on_bad_image,
                                           exif_orientation=data.exif_orientation)
    if dataset.num_classes != cfg.model.num_classes:
        raise ValueError(f"{ann_file} has {dataset.num_classes} categories but model.num_classes is "
                         f"{cfg.model.num_classes}")
    return dataset


def build_train_loader(cfg: Config, rank: int = 0, world_size: int = 1) -> tuple[DataLoader, GroupedBatchSampler]:
    """The training loader and its batch sampler (call ``sampler.set_epoch`` before each epoch).

    With ``data.train.repeat_threshold`` t, images are repeated by LVIS's repeat factors
    r_i = max over the image's categories of max(1, sqrt(t / f_c)), rounded as ``data.train.repeat_rounding``
    says: ``stochastic`` (floor(r_i) + Bernoulli(frac(r_i)) every epoch; an epoch holds round(sum_i r_i)
    images) or ``ceil`` (ceil(r_i) copies; an epoch holds sum_i ceil(r_i) images) instead of N.

    The loader's dataset is a :class:`SeededDataset` over the train set (``loader.dataset.dataset``) and the
    sampler yields ``(index, sample_seed)`` pairs. The loader has its own generator, so creating its
    iterators (every epoch, and on resume) does not draw from the process's global torch RNG.

    Batches are full (``drop_last``), except when a process's share of an epoch is smaller than one batch
    (e.g. 3 images and ``data.batch_size`` 8): the epoch is then one incomplete batch of those images, with a
    warning, rather than no batch at all.
    """
    data = cfg.data
    if data.batch_size % world_size:
        raise ValueError(f"data.batch_size ({data.batch_size}) must be divisible by the number of processes "
                         f"({world_size})")
    dataset = build_dataset(cfg, "train")
    if len(dataset) == 0:
        raise ValueError(empty_training_set_message(dataset, cfg.data.train.filter_empty))
    threshold = data.train.repeat_threshold
    factors = repeat_factors(dataset.image_category_ids(), threshold) if threshold is not None else None
    batch_size = data.batch_size // world_size

    def sampler_for(drop_last: bool) -> GroupedBatchSampler:
        return GroupedBatchSampler(dataset.aspect_ratios(), batch_size=batch_size, seed=cfg.runtime.seed,
                                   shuffle=True, group_by_aspect_ratio=data.aspect_ratio_grouping, rank=rank,
                                   world_size=world_size, drop_last=drop_last, repeat_factors=factors,
                                   repeat_rounding=data.train.repeat_rounding, sample_seeds=True)

    sampler = sampler_for(drop_last=True)
    if len(sampler) == 0:  # fewer images per process than one batch: keep the incomplete batch
        sampler = sampler_for(drop_last=False)
        logger.warning("%s: %d training images give no full batch of %d per process (data.batch_size %d): each "
                       "step trains on the %d images of this process's epoch, a smaller batch than configured "
                       "(schedule.lr is not rescaled; an epoch is one step)", dataset.ann_file, len(dataset),
                       batch_size, data.batch_size, sampler.shard_size)
    loader = DataLoader(SeededDataset(dataset), batch_sampler=sampler, num_workers=data.num_workers,
                        collate_fn=DetectionCollator(data.size_divisor), pin_memory=torch.cuda.is_available(),
                        persistent_workers=data.num_workers > 0,
                        worker_init_fn=worker_init_ignoring_stop_signals(make_worker_init_fn()),
                        generator=make_generator(cfg.runtime.seed + rank))
    return loader, sampler


def empty_training_set_message(dataset: CocoDetection | LVISDetection, filter_empty: bool) -> str:
    """Why a training set holds no image, naming its annotation file."""
    stats = dataset.stats
    if stats["num_filtered_images"] == 0:
        return f"{dataset.ann_file}: the training set is empty: the file lists no images"
    num_dropped = stats["num_dropped"]
    dropped = f", {num_dropped} box{'es were' if num_dropped > 1 else ' was'} dropped as empty" if num_dropped else ""
    return (f"{dataset.ann_file}: the training set is empty: none of its {stats['num_filtered_images']} images has "
            f"a non-crowd box{dropped}, and data.train.filter_empty={str(filter_empty).lower()} drops images "
            "without boxes")


def build_val_loader(cfg: Config, rank: int = 0, world_size: int = 1) -> DataLoader:
    """The evaluation loader: this process's contiguous shard of the val set, no duplicates, in batches of images
    that share one padded shape (:mod:`detector.data.inference_batches`), so that no image's detections depend on
    the batch size, its batch partners or the number of processes."""
    dataset = build_dataset(cfg, "val")
    data = cfg.data
    shapes = [padded_shape(height, width, data.test_min_size, data.test_max_size, data.size_divisor)
              for height, width in dataset.image_sizes()]
    sampler = ShapeGroupedBatchSampler(shapes, data.test_batch_size, rank=rank, world_size=world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=data.num_workers,
                      collate_fn=DetectionCollator(data.size_divisor), pin_memory=torch.cuda.is_available(),
                      worker_init_fn=worker_init_ignoring_stop_signals())
