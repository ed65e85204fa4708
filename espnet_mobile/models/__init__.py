"""Reference PyTorch models, faithful to the papers and to the authors' checkpoints."""

from espnet_mobile.models.espnet import ESPModule, ESPNet, ESPNetEncoder
from espnet_mobile.models.espnetv2 import ESPNetv2Segmentation

__all__ = ["ESPModule", "ESPNet", "ESPNetEncoder", "ESPNetv2Segmentation"]
