"""Reference PyTorch models, faithful to the papers and to the authors' checkpoints."""

from espnet_mobile.models.espnet import ESPNet, ESPNetEncoder, ESPModule
from espnet_mobile.models.espnetv2 import ESPNetv2Segmentation

__all__ = ["ESPNet", "ESPNetEncoder", "ESPModule", "ESPNetv2Segmentation"]
