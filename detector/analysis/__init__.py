"""Figures of the papers, computed from the project's own losses, assigners and models.

Each module holds the pure computations (tested on hand-made inputs) and one plotting function; the
command-line entry points are ``tools/plot_*.py``. Plots use matplotlib's object API with the Agg canvas
(``matplotlib.figure.Figure``), so no display and no pyplot global state are involved.

- :mod:`focal_curves`       RetinaNet Fig. 1: FL(p_t) for several gamma.
- :mod:`loss_distribution`  RetinaNet Fig. 4: cumulative distribution of the normalised FL of positives and
                            negatives of a trained model.
- :mod:`sample_ratio`       EFL Fig. 2: positive / negative sample ratio per category under an assigner.
- :mod:`score_iou`          GFL Fig. 2: predicted classification score vs IoU with the ground truth.
- :mod:`metrics_plot`       training curves from ``metrics.jsonl``.
"""
