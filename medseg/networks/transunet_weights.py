"""Local checkpoints for :class:`~medseg.networks.TransUNet`: torch state dicts and ViT ``.npz`` files.

Nothing is downloaded. An ``.npz`` uses the naming of Google's JAX ViT checkpoints (``R50+ViT-B_16.npz``,
ImageNet-21k), which the TransUNet authors start from: ``conv_root/kernel``, ``block{s}/unit{u}/conv{k}/kernel``,
``embedding/kernel``, ``Transformer/posembed_input/pos_embedding``,
``Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/query/kernel``, ``.../MlpBlock_3/Dense_0/kernel``,
``.../LayerNorm_0/scale``, ``Transformer/encoder_norm/scale``, ... Conversions: conv kernels HWIO -> OIHW,
dense kernels (in, out) -> (out, in), attention kernels (hidden, heads, head_dim) -> (hidden, hidden).
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .transunet import TransUNet

__all__ = ["LoadReport", "convert_vit_npz", "load_checkpoint", "resize_position_embedding"]

_STATE_DICT_WRAPPERS = ("state_dict", "model", "network")


class LoadReport(NamedTuple):
    """What :func:`load_checkpoint` did: keys loaded, model keys left as they were, checkpoint keys not used."""

    loaded: list[str]
    missing: list[str]
    skipped: list[str]


def resize_position_embedding(embedding: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a position embedding ``(1, hidden, *grid)`` to ``size`` by bi/trilinear interpolation.

    Corners are aligned (``align_corners=True``), which matches ``scipy.ndimage.zoom(order=1)`` that the
    TransUNet authors use to resize pretrained embeddings. Returned unchanged when the grid already fits.
    """
    size = tuple(int(s) for s in size)
    if tuple(embedding.shape[2:]) == size:
        return embedding
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(embedding, size=size, mode=mode, align_corners=True)


def load_checkpoint(model: TransUNet, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a local checkpoint into ``model`` in place.

    ``.pt``/``.pth``: a state dict of :class:`TransUNet`, bare or under a ``state_dict``/``model``/``network``
    key. A position embedding of another grid is resized to the model's. ``strict=True`` requires the keys and
    shapes to match exactly; ``strict=False`` loads the matching ones (e.g. all but a head with another number
    of classes) and reports the rest.

    ``.npz``: JAX ViT naming (see the module docstring); fills the ResNet encoder, patch embedding, position
    embedding and Transformer, leaves the decoder and head as initialised (reported as ``missing``). The cls
    token's position entry is dropped and the grid resized; for ``in_channels != 3`` the RGB stem kernel is
    averaged over its input channels and repeated; 3D models get 2D kernels inflated along depth (repeated,
    divided by the depth) and the 2D position grid stretched along depth. Every parameter that these parts
    need must be in the file with a fitting shape, whatever ``strict`` says.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown extension, unreadable file, or keys/shapes that do not fit (the message names the
            file and the keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TransUNet checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with _open_npz(path) as archive:
            state = convert_vit_npz(archive, model, source=str(path))
        return _load_state_dict(model, state, str(path), strict=False)
    if suffix in (".pt", ".pth"):
        return _load_state_dict(model, _read_torch_state_dict(path), str(path), strict)
    raise ValueError(f"unsupported checkpoint type {suffix!r} for {path}: expected .pt, .pth or .npz")


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read TransUNet checkpoint {path}: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array, not an .npz archive of named arrays")
    return archive


def _read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise ValueError(f"cannot read TransUNet checkpoint {path}: {error}") from error
    if isinstance(checkpoint, Mapping):
        for wrapper in _STATE_DICT_WRAPPERS:
            if isinstance(checkpoint.get(wrapper), Mapping):
                checkpoint = checkpoint[wrapper]
                break
    if not (isinstance(checkpoint, Mapping) and all(isinstance(v, torch.Tensor) for v in checkpoint.values())):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return dict(checkpoint)


def _load_state_dict(model: TransUNet, state: dict[str, torch.Tensor], source: str, strict: bool) -> LoadReport:
    expected = model.state_dict()
    position, target_position = state.get("position_embedding"), expected["position_embedding"]
    if position is not None and position.ndim == target_position.ndim and position.shape[1] == target_position.shape[1]:
        state["position_embedding"] = resize_position_embedding(position, model.grid_size)
    mismatched = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if strict and (mismatched or missing or unexpected):
        problems = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in mismatched]
        problems += [f"missing from checkpoint: {k}" for k in missing]
        problems += [f"not in model: {k}" for k in unexpected]
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(f"checkpoint {source} does not fit this TransUNet (strict=True):\n  {shown}")
    loadable = {k: v for k, v in state.items() if k in expected and k not in mismatched}
    model.load_state_dict(loadable, strict=False)
    return LoadReport(loaded=sorted(loadable), missing=missing + mismatched, skipped=unexpected + mismatched)


def convert_vit_npz(
    weights: Mapping[str, np.ndarray], model: TransUNet, source: str = "npz"
) -> dict[str, torch.Tensor]:
    """Translate JAX R50+ViT names and layouts to ``model``'s encoder/Transformer state-dict entries.

    Raises ``ValueError`` naming ``source`` and the key when a needed array is missing or has the wrong shape.
    """
    expected = model.state_dict()

    def vector(array: np.ndarray, _: torch.Size) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array)).reshape(-1)

    def dense(array: np.ndarray, _: torch.Size) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array)).T

    def attention_in(array: np.ndarray, _: torch.Size) -> torch.Tensor:  # (hidden, heads, head_dim)
        return torch.from_numpy(np.asarray(array)).reshape(array.shape[0], -1).T

    def attention_out(array: np.ndarray, _: torch.Size) -> torch.Tensor:  # (heads, head_dim, hidden)
        return torch.from_numpy(np.asarray(array)).reshape(-1, array.shape[-1]).T

    def position(array: np.ndarray, _: torch.Size) -> torch.Tensor:
        return _position_from_tokens(torch.from_numpy(np.asarray(array)), model, source)

    plan: dict[str, tuple[str, Callable[[np.ndarray, torch.Size], torch.Tensor]]] = {
        "encoder.root.conv.conv.weight": ("conv_root/kernel", _conv_kernel),
        "encoder.root.norm.weight": ("gn_root/scale", vector),
        "encoder.root.norm.bias": ("gn_root/bias", vector),
        "patch_embedding.weight": ("embedding/kernel", _conv_kernel),
        "patch_embedding.bias": ("embedding/bias", vector),
        "position_embedding": ("Transformer/posembed_input/pos_embedding", position),
        "transformer_norm.weight": ("Transformer/encoder_norm/scale", vector),
        "transformer_norm.bias": ("Transformer/encoder_norm/bias", vector),
    }
    for stage_index, stage in enumerate(model.encoder.stages):
        for unit_index, unit in enumerate(stage):
            ours, theirs = f"encoder.stages.{stage_index}.{unit_index}", f"block{stage_index + 1}/unit{unit_index + 1}"
            for k in (1, 2, 3):
                plan[f"{ours}.conv{k}.conv.weight"] = (f"{theirs}/conv{k}/kernel", _conv_kernel)
                plan[f"{ours}.norm{k}.weight"] = (f"{theirs}/gn{k}/scale", vector)
                plan[f"{ours}.norm{k}.bias"] = (f"{theirs}/gn{k}/bias", vector)
            if unit.projection is not None:
                plan[f"{ours}.projection.0.conv.weight"] = (f"{theirs}/conv_proj/kernel", _conv_kernel)
                plan[f"{ours}.projection.1.weight"] = (f"{theirs}/gn_proj/scale", vector)
                plan[f"{ours}.projection.1.bias"] = (f"{theirs}/gn_proj/bias", vector)
    for index in range(len(model.transformer)):
        ours, theirs = f"transformer.{index}", f"Transformer/encoderblock_{index}"
        attention = f"{theirs}/MultiHeadDotProductAttention_1"
        for name in ("query", "key", "value"):
            plan[f"{ours}.attention.{name}.weight"] = (f"{attention}/{name}/kernel", attention_in)
            plan[f"{ours}.attention.{name}.bias"] = (f"{attention}/{name}/bias", vector)
        plan[f"{ours}.attention.out.weight"] = (f"{attention}/out/kernel", attention_out)
        plan[f"{ours}.attention.out.bias"] = (f"{attention}/out/bias", vector)
        for norm, jax_norm in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            plan[f"{ours}.{norm}.weight"] = (f"{theirs}/{jax_norm}/scale", vector)
            plan[f"{ours}.{norm}.bias"] = (f"{theirs}/{jax_norm}/bias", vector)
        for linear, dense_name in (("linear1", "Dense_0"), ("linear2", "Dense_1")):
            plan[f"{ours}.mlp.{linear}.weight"] = (f"{theirs}/MlpBlock_3/{dense_name}/kernel", dense)
            plan[f"{ours}.mlp.{linear}.bias"] = (f"{theirs}/MlpBlock_3/{dense_name}/bias", vector)

    absent = [theirs for theirs, _ in plan.values() if theirs not in weights]
    if absent:
        raise ValueError(f"{source} lacks {len(absent)} array(s) this TransUNet needs, e.g. {absent[:5]}")
    state: dict[str, torch.Tensor] = {}
    for ours, (theirs, convert) in plan.items():
        target = expected[ours].shape
        converted = convert(weights[theirs], target)
        if converted.shape != target:
            raise ValueError(
                f"{source}: {theirs} {tuple(np.shape(weights[theirs]))} converts to {tuple(converted.shape)}, "
                f"but {ours} is {tuple(target)}"
            )
        state[ours] = converted.to(expected[ours].dtype).contiguous()
    return state


def _conv_kernel(array: np.ndarray, target: torch.Size) -> torch.Tensor:
    """HWIO -> OIHW; adapt the input channels to ``target``'s; inflate along depth for a 3D target."""
    if np.ndim(array) != 4:
        return torch.from_numpy(np.asarray(array))  # the caller reports the shape mismatch
    kernel = torch.from_numpy(np.asarray(array)).permute(3, 2, 0, 1)
    in_channels = target[1]
    if kernel.shape[1] != in_channels:
        kernel = kernel.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
    if len(target) == 5:
        depth = target[2]
        kernel = kernel.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
    return kernel


def _position_from_tokens(tokens: torch.Tensor, model: TransUNet, source: str) -> torch.Tensor:
    """``(1, N[+1], hidden)`` on a square grid -> ``(1, hidden, *model.grid_size)``."""
    count = tokens.shape[1]
    side = math.isqrt(count)
    if side * side != count:  # a leading cls-token entry, which segmentation does not use
        side = math.isqrt(count - 1)
        if side * side != count - 1:
            raise ValueError(f"{source}: position embedding of {count} tokens is not a square grid (+ cls token)")
        tokens = tokens[:, 1:]
    grid = tokens.transpose(1, 2).reshape(1, tokens.shape[2], side, side)
    if model.spatial_dims == 3:
        grid = grid.unsqueeze(2)  # one slice, stretched along depth by the resize
    return resize_position_embedding(grid, model.grid_size)
