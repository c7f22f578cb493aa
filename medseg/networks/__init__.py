"""Networks: TransUNet (2D/3D) and its parts; MONAI's ``UNet``/``DynUNet`` are used from the bundles directly."""

from .resnet_encoder import Bottleneck, ResNetEncoder, WeightStandardizedConv
from .transunet import DecoderBlock, SelfAttention, TransformerLayer, TransUNet, TransUNetOutput
from .transunet_weights import LoadReport, convert_vit_npz, load_checkpoint, resize_position_embedding

__all__ = [
    "Bottleneck",
    "DecoderBlock",
    "LoadReport",
    "ResNetEncoder",
    "SelfAttention",
    "TransUNet",
    "TransUNetOutput",
    "TransformerLayer",
    "WeightStandardizedConv",
    "convert_vit_npz",
    "load_checkpoint",
    "resize_position_embedding",
]
