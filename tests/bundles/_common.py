"""What every bundle test checks the same way: the MONAI bundle metadata fields and the last checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

import medseg.engine

#: the fields MONAI's bundle metadata schema requires
MANDATORY_METADATA = (
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
#: the keys of each tensor in ``network_data_format``
TENSOR_FORMAT_KEYS = {
    "type",
    "format",
    "modality",
    "num_channels",
    "spatial_shape",
    "dtype",
    "value_range",
    "is_patch_data",
    "channel_def",
}


def last_checkpoint(bundle_root: Path) -> dict:
    """The newest ``last_checkpoint_epoch=N.pt`` under ``bundle_root/models``, with the trainer's epoch added."""
    ckpt = torch.load(medseg.engine.last_checkpoint(bundle_root / "models"), weights_only=True)
    ckpt["trainer"]["epoch"] = ckpt["trainer"]["iteration"] // ckpt["trainer"]["epoch_length"]  # ignite keeps these
    return ckpt


def assert_bundle_properties(configs: Path, bundle_root: Path, **overrides) -> None:
    """MONAI's required train and inference properties are all defined by the bundle's configs."""
    from monai.bundle import ConfigWorkflow

    for config, kind in (("train.json", "train"), ("inference.json", "infer")):
        workflow = ConfigWorkflow(
            config_file=str(configs / config),
            meta_file=str(configs / "metadata.json"),
            logging_file=False,
            workflow_type=kind,
            bundle_root=str(bundle_root),  # handlers write logs under it
            **overrides,
        )
        workflow.initialize()
        assert not workflow.check_properties(), config
