"""Train InverseForm's inverse-transformation network on synthetic boundary maps and write a checkpoint.

Random shapes (unions of star-shaped blobs) and random affine warps of them (rotation ±10°, scale and shear ±0.1,
shift ±5 % of the tile), on the CPU in a few minutes; see medseg.networks.inverseform. The checkpoint is what
``medseg.losses.InverseFormLoss(checkpoint=...)`` loads:

python scripts/train_inverseform.py --out checkpoints/inverseform.pt
python scripts/train_inverseform.py --out /tmp/if_small.pt --steps 500 --tile-size 32 --channels 8 16 32
"""

from medseg.networks.inverseform import main

if __name__ == "__main__":
    raise SystemExit(main())
