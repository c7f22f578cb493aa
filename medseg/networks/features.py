"""Network-side hook for feature-level losses: the decoder features a network's classifier reads, as aux ``features``.

MONAI's inferers and engines need a network whose output is the plain logits tensor, so the features are taken
with a forward pre-hook on the layer that produces the logits, without changing the network or its output::

    with FeatureHook(net) as hook:
        logits = net(images)
        loss = ConditionalBoundaryLoss()(logits, labels, **hook.aux())

In a MONAI ``SupervisedTrainer`` (whose loss is called as ``loss(pred, label)``), keep the hook attached and
wrap the loss: ``HookedFeaturesLoss(loss, FeatureHook(net).attach())``.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import UNet
from torch import nn

from .transunet import TransUNet

__all__ = ["FeatureHook", "HookedFeaturesLoss", "feature_layer"]


def feature_layer(network: nn.Module) -> nn.Module:
    """The layer whose input are the decoder features: the last layer before the logits.

    - medseg ``TransUNet``: ``segmentation_head`` (a 3×3 convolution on the decoder's last map, full resolution).
    - MONAI ``UNet``: ``model[-1]``, the top decoder level (a transposed convolution of stride ``strides[0]``,
      followed by a residual unit when ``num_res_units > 0``). MONAI's UNet has no 1×1 classifier: the last
      features with more channels than classes are this level's input, the concatenated skip and upsampled maps
      at ``1/strides[0]`` of the input size; losses reading them work on that grid.

    Other networks: pass the layer to :class:`FeatureHook` yourself.
    """
    if isinstance(network, TransUNet):
        return network.segmentation_head
    if isinstance(network, UNet):
        return network.model[-1]
    raise ValueError(
        f"no known feature layer for {type(network).__name__}; pass the layer whose input are the decoder "
        "features, e.g. FeatureHook(net, layer=net.head)"
    )


class FeatureHook:
    """Captures the input of ``layer`` (default :func:`feature_layer`) at every forward pass of ``network``.

    Use as a context manager, or :meth:`attach` / :meth:`remove`. :attr:`features` is the last captured map
    ``(B, F, *S_f)``, with gradient (a feature-level loss trains the decoder through it). Where the network pads
    its input and crops its output (medseg's TransUNet pads each side to a multiple of 16), the features are
    cropped the same way (centred, the smaller half of the padding before), to the output's spatial size.
    """

    def __init__(self, network: nn.Module, layer: nn.Module | None = None) -> None:
        self.network = network
        self.layer = layer if layer is not None else feature_layer(network)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._features: torch.Tensor | None = None
        self._output_size: torch.Size | None = None

    def _capture_features(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._features = args[0]

    def _capture_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        logits = output if isinstance(output, torch.Tensor) else output[0]
        self._output_size = logits.shape[2:]

    def attach(self) -> FeatureHook:
        """Register the hooks (idempotent); returns ``self``."""
        if not self._handles:
            self._handles = [
                self.layer.register_forward_pre_hook(self._capture_features),
                self.network.register_forward_hook(self._capture_output),
            ]
        return self

    def remove(self) -> None:
        """Remove the hooks and forget the captured features."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._features = None
        self._output_size = None

    def __enter__(self) -> FeatureHook:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def features(self) -> torch.Tensor:
        """The features of the last forward pass, cropped where the network padded."""
        if self._features is None or self._output_size is None:
            raise RuntimeError("no features captured yet: attach the hook and run the network forward first")
        features, size = self._features, self._output_size
        if features.shape[2:] != size and all(f >= s for f, s in zip(features.shape[2:], size, strict=True)):
            crop = tuple(slice((f - s) // 2, (f - s) // 2 + s) for f, s in zip(features.shape[2:], size, strict=True))
            features = features[(slice(None), slice(None), *crop)]
        return features

    def aux(self) -> dict[str, torch.Tensor]:
        """``{"features": features}``, to pass as ``loss(logits, labels, **hook.aux())``."""
        return {"features": self.features}


class HookedFeaturesLoss(nn.Module):
    """``loss(input, target, **aux)`` with ``features`` taken from ``hook``: a feature-level loss behind MONAI's
    ``loss(pred, label)`` call. ``aux_keys`` are the wrapped loss's minus ``features`` (what the batch must carry,
    for :class:`medseg.engine.BatchAuxLoss`)."""

    def __init__(self, loss: nn.Module, hook: FeatureHook) -> None:
        super().__init__()
        self.loss = loss
        self.hook = hook

    @property
    def aux_keys(self) -> tuple[str, ...]:
        return tuple(key for key in getattr(self.loss, "aux_keys", ()) if key != "features")

    def forward(self, input: torch.Tensor, target: torch.Tensor, **aux: torch.Tensor) -> torch.Tensor:
        return self.loss(input, target, **aux, **self.hook.aux())
