"""medseg datasets: Synapse (TransUNet layout), raw BTCV, Cityscapes, nnU-Net augmentation, synthetic data.

Each dataset has a datalist builder (MONAI-style lists of dicts) and a MONAI transform chain; every file
error names the file. :mod:`medseg.data.synthetic` writes small stand-ins in the exact layouts.
"""

from .augment import NnUNetAugmentd
from .btcv import btcv_cases, btcv_datalist, btcv_transforms, split_cases
from .cityscapes import (
    CITYSCAPES_LABELS,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    TRAIN_CLASS_NAMES,
    TRAIN_ID_TO_LABEL_ID,
    CityscapesTrainIdsd,
    cityscapes_datalist,
    cityscapes_transforms,
    labelids_to_trainids,
    prediction_filename,
    save_labelids_png,
    trainids_to_labelids,
)
from .loading import CheckAlignedd, LoadArrayd, MapLabelsd, ReadImaged, check_files_exist, training_part
from .synapse import (
    BTCV_LABELS,
    DEFAULT_BTCV_TO_SYNAPSE,
    SYNAPSE_TEST_CASES,
    SYNAPSE_TRAIN_CASES,
    case_name,
    synapse_datalist,
    synapse_organ_names,
    synapse_slice_transforms,
    synapse_volume_transforms,
)
from .synthetic import make_cityscapes, make_synapse
from .synthetic_mri import make_msd, make_nnunet
from .user_dataset import read_user_dataset, user_datalist
from .user_transforms import DropIgnoredd, SavePredictiond, UnsqueezeAxisd, user_transforms

__all__ = [
    "BTCV_LABELS",
    "CITYSCAPES_LABELS",
    "DEFAULT_BTCV_TO_SYNAPSE",
    "IGNORE_INDEX",
    "LABEL_ID_TO_TRAIN_ID",
    "SYNAPSE_TEST_CASES",
    "SYNAPSE_TRAIN_CASES",
    "TRAIN_CLASS_NAMES",
    "TRAIN_ID_TO_LABEL_ID",
    "CheckAlignedd",
    "CityscapesTrainIdsd",
    "DropIgnoredd",
    "LoadArrayd",
    "MapLabelsd",
    "NnUNetAugmentd",
    "ReadImaged",
    "SavePredictiond",
    "UnsqueezeAxisd",
    "btcv_cases",
    "btcv_datalist",
    "btcv_transforms",
    "case_name",
    "check_files_exist",
    "cityscapes_datalist",
    "cityscapes_transforms",
    "labelids_to_trainids",
    "make_cityscapes",
    "make_msd",
    "make_nnunet",
    "make_synapse",
    "prediction_filename",
    "read_user_dataset",
    "save_labelids_png",
    "split_cases",
    "synapse_datalist",
    "synapse_organ_names",
    "synapse_slice_transforms",
    "synapse_volume_transforms",
    "trainids_to_labelids",
    "training_part",
    "user_datalist",
    "user_transforms",
]
