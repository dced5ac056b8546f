"""DenseDetector: backbone -> FPN -> dense head, with anchors per level.

``dense_outputs(images)`` runs the network and lays out the anchors (:class:`DenseOutputs`); everything else
is a function of that object: training, ``model(images, targets)``, returns the head's dict of scalar losses;
inference, ``model(images, image_sizes=None)``, returns the head's post-processed detections, one dict per image
with ``boxes`` (N, 4) xyxy in input pixels, ``scores`` (N,) and ``labels`` (N,) (contiguous 0-based class indices).
"""

from __future__ import annotations

from torch import Tensor, nn

from detector.models.anchors import AnchorGenerator
from detector.models.heads.base import DenseHead
from detector.models.outputs import DenseOutputs


class DenseDetector(nn.Module):
    def __init__(self, backbone: nn.Module, neck: nn.Module, head: DenseHead, anchor_generator: AnchorGenerator):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchor_generator = anchor_generator

    def dense_outputs(self, images: Tensor) -> DenseOutputs:
        """The head's raw per-anchor outputs for ``images`` (B, 3, H, W), normalised and padded, with the anchors
        laid out for that input size (which ``model.anchors.strides_from_input`` needs)."""
        features = self.neck(self.backbone(images))
        pred_logits, pred_regression, pred_quality = self.head(features)
        image_size = (images.shape[-2], images.shape[-1])
        anchors, num_anchors_per_level = self.anchor_generator(features, image_size)
        return DenseOutputs(pred_logits, pred_regression, pred_quality, anchors, num_anchors_per_level, image_size)

    def forward(self, images: Tensor, targets: list[dict] | None = None, image_sizes=None,
                loss_normalisers: dict[str, Tensor] | None = None):
        """Training: ``model(images, targets)``, the losses divided by ``loss_normalisers`` when given (gradient
        accumulation passes the whole step's, see :meth:`DenseHead.loss`) or else by the batch's own.
        Inference: ``model(images, image_sizes=None)``, where ``image_sizes`` gives each image's (h, w) after the
        resize and before the batch padding (B pairs or a (B, 2) tensor): boxes are clipped to it before NMS, so
        an image's detections do not depend on what it is batched with. None takes the padded size for every
        image (exact for one image padded by nothing)."""
        if self.training:
            self._check_targets(images, targets)
            return self.head.loss(self.dense_outputs(images), targets, loss_normalisers)
        return self.head.predict(self.dense_outputs(images), image_sizes)

    def loss_normaliser_sums(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """This process's sums behind the loss normalisers of a training batch (positives, and the head's
        weight sums), for gradient accumulation to add up over micro-batches before any of them backpropagates.
        Runs the network forward (GFL's box weights are predicted scores); call it under ``torch.no_grad()``."""
        self._check_targets(images, targets)
        return self.head.loss_normaliser_sums(self.dense_outputs(images), targets)

    @staticmethod
    def _check_targets(images: Tensor, targets: list[dict] | None) -> None:
        if targets is None:
            raise ValueError("DenseDetector in training mode needs targets (a list of dicts with boxes, labels)")
        if len(targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
