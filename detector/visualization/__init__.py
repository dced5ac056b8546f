"""Pictures of what a detector sees: ground truth, detections, and training samples after the transforms."""

from detector.visualization.browse import draw_transformed_sample, iter_drawn_samples
from detector.visualization.detections import (DEFAULT_SCORE_THR, detections_by_image, draw_first_images,
                                               draw_image, predict_images, select_indices)
from detector.visualization.draw import (add_caption, class_color, denormalize, draw_boxes, draw_gt_and_detections,
                                         hstack_panels, save_png, upscale)

__all__ = ["DEFAULT_SCORE_THR", "add_caption", "class_color", "denormalize", "detections_by_image", "draw_boxes",
           "draw_first_images", "draw_gt_and_detections", "draw_image", "draw_transformed_sample", "hstack_panels",
           "iter_drawn_samples", "predict_images", "save_png", "select_indices", "upscale"]
