"""Frozen features of a backbone: the pooled token (CLS, or the mean patch token when there is no CLS).

The run folder's feature cache (features of a checkpoint, extracted once for kNN and linear probes) is in
:mod:`smallvit.runs`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smallvit.data.pipeline import Augmentation


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor, augment: Augmentation, batch_size: int = 256) -> Tensor:
    """Pooled features [N, D] (float32) of uint8 ``images`` [N, C, H, W] after the evaluation transform."""
    was_training = backbone.training
    backbone.eval()
    features = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        indices = torch.arange(start, start + len(chunk), device=chunk.device)
        view = augment(chunk, None, indices, None, 0).main
        features.append(backbone(view.images).pooled.float())
    backbone.train(was_training)
    return torch.cat(features)
