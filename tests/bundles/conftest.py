"""Small synthetic datasets in the real on-disk layouts, written once per test session."""

from __future__ import annotations

import pytest

from medseg.data.synthetic import make_cityscapes, make_synapse


@pytest.fixture(scope="session")
def synthetic_btcv(tmp_path_factory):
    """Raw BTCV layout (RawData/Training/img|label, dataset_0.json): 2 training, 1 validation and 2 test cases
    (the fallback split of 5 cases), 32² in-plane."""
    return make_synapse(tmp_path_factory.mktemp("btcv"), layout="btcv", cases=5, size=32, seed=0, datalist=True)


@pytest.fixture(scope="session")
def synthetic_transunet(tmp_path_factory):
    """TransUNet's preprocessed Synapse layout (train_npz, test_vol_h5, lists): 4 cases, 32² slices."""
    return make_synapse(tmp_path_factory.mktemp("transunet"), layout="transunet", cases=4, size=32, seed=0)


@pytest.fixture(scope="session")
def synthetic_cityscapes(tmp_path_factory):
    """Cityscapes layout (leftImg8bit, gtFine): 5 images of 64×32: 3 train, 1 held out of train for model
    selection, 1 official val (the test set), and 1 unlabelled test image."""
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"), cases=5, size=64, seed=0)
