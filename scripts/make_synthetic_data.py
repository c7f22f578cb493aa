"""Write synthetic Synapse/BTCV, Cityscapes or MRI-like nnU-Net v2 / MSD data in the real datasets' layouts.

See medseg.data.synthetic and medseg.data.synthetic_mri.

python scripts/make_synthetic_data.py --dataset synapse --layout transunet --cases 30 --size 96 --out data/synapse
python scripts/make_synthetic_data.py --dataset synapse --layout btcv --datalist --out data/btcv
python scripts/make_synthetic_data.py --dataset cityscapes --cases 12 --size 256 --out data/cityscapes
python scripts/make_synthetic_data.py --dataset nnunet --channels T2 ADC --out data/Dataset901_SyntheticMRI
python scripts/make_synthetic_data.py --dataset msd --channels FLAIR T1 T2 ADC --out data/Task901_SyntheticMRI
"""

from medseg.data.synthetic import main

if __name__ == "__main__":
    raise SystemExit(main())
