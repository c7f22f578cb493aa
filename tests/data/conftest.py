"""Small synthetic datasets, written once per test session in each layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.data import make_cityscapes, make_synapse

SIZE = 32
CASES = 5  # the protocol's ratio gives 3 train + 2 test cases


@pytest.fixture(scope="session")
def transunet_root(tmp_path_factory) -> Path:
    return make_synapse(tmp_path_factory.mktemp("transunet"), "transunet", cases=CASES, size=SIZE, seed=3)


@pytest.fixture(scope="session")
def btcv_root(tmp_path_factory) -> Path:
    return make_synapse(tmp_path_factory.mktemp("btcv"), "btcv", cases=CASES, size=SIZE, seed=3, datalist=True)


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory) -> Path:
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"), cases=6, size=64, seed=3)
