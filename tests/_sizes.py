"""Run sizes the tests share."""

#: synapse_unet3d at CPU-test size: 1 epoch of a 3-level UNet on 16³ patches of volumes resampled to
#: 12 × 12 × 24 mm voxels; a few seconds on one core.
TINY_UNET3D = {
    "max_epochs": 1,
    "val_interval": 1,
    "num_workers": 0,
    "batch_size": 1,
    "num_samples": 1,
    "roi_size": [16, 16, 16],
    "pixdim": [12.0, 12.0, 24.0],
    "network_def#channels": [4, 8, 16],
    "network_def#strides": [2, 2],
    "network_def#num_res_units": 0,
}
