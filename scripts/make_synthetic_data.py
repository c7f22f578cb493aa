"""Write synthetic Synapse/BTCV or Cityscapes data in the real datasets' layouts (see medseg.data.synthetic).

python scripts/make_synthetic_data.py --dataset synapse --layout transunet --cases 30 --size 96 --out data/synapse
python scripts/make_synthetic_data.py --dataset synapse --layout btcv --datalist --out data/btcv
python scripts/make_synthetic_data.py --dataset cityscapes --cases 12 --size 256 --out data/cityscapes
"""

from medseg.data.synthetic import main

if __name__ == "__main__":
    raise SystemExit(main())
