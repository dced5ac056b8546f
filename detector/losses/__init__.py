"""Loss functions (pure functions; nn.Modules only where state is needed)."""

from detector.losses.box_losses import giou_loss, l1_loss, smooth_l1_loss
from detector.losses.focal import focal_loss, reduce_loss

__all__ = ["focal_loss", "reduce_loss", "l1_loss", "smooth_l1_loss", "giou_loss"]
