"""The runtime floor every other part of focaldet stands on, importing nothing else of it.

distributed (torchrun process groups, collectives), seeding (seeds and generator states), checkpoint (crash-safe
checkpoint files), model_state (weights in and out of checkpoints), metrics_log (metrics.jsonl + TensorBoard),
logging_setup (console logging of the tools) and device (the run's device and autocast dtype).
"""
