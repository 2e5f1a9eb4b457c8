"""A team's own models as a plug-in: `--plugin team_models` (with this folder on PYTHONPATH) registers them."""
import torch.nn as nn
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from harness.models.registry import register_model


class LRASPP(nn.Module):  # a localizer: B×3×S×S (ImageNet-normalised) → B×1×h×w mask logits
    def __init__(self, num_classes: int = 1):
        super().__init__()
        self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)

    def forward(self, x):
        return self.net(x)["out"]  # torchvision returns a dict


@register_model("localizer")  # the function's name is the NAME in --localizer LABEL:NAME=CKPT
def team_lraspp(num_classes: int = 1) -> nn.Module:  # its keyword options: --model-option LABEL:KEY=VALUE
    return LRASPP(num_classes)


@register_model("sdecoder")  # a secret decoder: B×3×400×400 in [0, 1] → B×100 bit logits
def team_sdecoder(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 5, 4, 2), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 4, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * width, 100))
