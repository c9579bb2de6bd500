"""Perceptual loss: distances between VGG19 feature maps of the SR and HR images.

The VGG19 is defined here; its weights are torchvision's ImageNet VGG19, fetched once through
`zerosr.pretrained` (hash-checked, cached). `weights_path=FILE` takes another file instead: a plain
state dict with torchvision's key names (`features.0.weight`, ..., `features.34.bias`), as
.safetensors or as a .pth/.pt read with `torch.load(weights_only=True)` (`classifier.*` keys are
ignored).

Layer names follow the paper: `conv3_4` is the 4th convolution of block 3 before its ReLU,
`relu3_4` after it. Only the layers up to the deepest one asked for are built.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zerosr import pretrained
from zerosr.errors import UserError

# Convolutions per block of VGG19 and their widths.
_BLOCKS = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_layer_names() -> list[str]:
    """Names of torchvision's `vgg19().features` modules, by index: conv1_1, relu1_1, ..., pool5."""
    names = []
    for block, (convs, _) in enumerate(_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return names


class VGG19Features(nn.Module):
    """VGG19 `features` up to `last_layer`, returning the named feature maps asked for.

    Inputs are RGB in [0, 1]; ImageNet normalisation happens inside. The module is frozen.
    """

    def __init__(self, last_layer: str = "conv5_4"):
        super().__init__()
        self.layer_names = vgg19_layer_names()
        if last_layer not in self.layer_names:
            raise UserError(f"unknown VGG19 layer '{last_layer}': use one of {', '.join(self.layer_names)}")
        layers: list[nn.Module] = []
        in_ch = 3
        for name in self.layer_names[: self.layer_names.index(last_layer) + 1]:
            if name.startswith("conv"):
                out_ch = _BLOCKS[int(name[4]) - 1][1]
                layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
                in_ch = out_ch
            elif name.startswith("relu"):
                layers.append(nn.ReLU())  # not in-place: the pre-ReLU map may be one of the outputs
            else:
                layers.append(nn.MaxPool2d(2, 2))
        # Named `features` so that the state dict keys are torchvision's.
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, path: str | Path) -> None:
        """Load torchvision-named VGG19 weights from `path`; extra keys (classifier, deeper layers) are ignored."""
        state = _read_state_dict(Path(path))
        own = self.state_dict()
        for key, tensor in own.items():
            if key not in state:
                raise UserError(f"VGG19 weights '{path}' lack '{key}': use a torchvision vgg19 state dict")
            if state[key].shape != tensor.shape:
                raise UserError(
                    f"VGG19 weights '{path}' have {key} of shape {tuple(state[key].shape)}, expected "
                    f"{tuple(tensor.shape)}: use a torchvision vgg19 (not vgg16/vgg19_bn) state dict"
                )
        self.load_state_dict({key: state[key] for key in own})

    def forward(self, x: torch.Tensor, layers: set[str]) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        out = {}
        for name, module in zip(self.layer_names, self.features):
            x = module(x)
            if name in layers:
                out[name] = x
        return out


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return pretrained.read_state_dict(path, "VGG19 weights")


_CRITERIA = {"l1": F.l1_loss, "l2": F.mse_loss}


class PerceptualLoss(nn.Module):
    """sum over layers of weight * criterion(VGG(sr)[layer], VGG(gt)[layer])."""

    def __init__(
        self,
        weights_path: str | Path | None = None,
        layer_weights: dict[str, float] | None = None,
        criterion: str = "l1",
    ):
        super().__init__()
        if criterion not in _CRITERIA:
            raise UserError(f"perceptual loss criterion '{criterion}' is unknown: use one of {', '.join(_CRITERIA)}")
        if layer_weights is None:
            layer_weights = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
        self.layer_weights = dict(layer_weights)
        if not self.layer_weights:
            raise UserError("perceptual loss layer_weights is empty: name at least one VGG19 layer, e.g. conv5_4")
        names = vgg19_layer_names()
        unknown = [n for n in self.layer_weights if n not in names]
        if unknown:
            raise UserError(f"unknown VGG19 layer(s) {unknown} in layer_weights: use names like conv3_4 or relu5_4")
        self.criterion = _CRITERIA[criterion]
        self.vgg = VGG19Features(last_layer=max(self.layer_weights, key=names.index))
        self.vgg.load_weights(weights_path or pretrained.path_of("vgg19"))

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.vgg.eval()  # the feature extractor is frozen whatever the engine's mode
        return self

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        layers = set(self.layer_weights)
        sr_features = self.vgg(sr, layers)
        with torch.no_grad():
            gt_features = self.vgg(gt.detach(), layers)
        loss = sr.new_zeros((), dtype=torch.float32)
        for name, weight in self.layer_weights.items():
            loss = loss + weight * self.criterion(sr_features[name].float(), gt_features[name].float())
        return loss
