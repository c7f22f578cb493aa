"""Score a folder of predicted label maps against references: ``python scripts/evaluate.py --pred DIR --ref DIR``.

A thin wrapper over :func:`medseg.metrics.evaluate.main`; ``--help`` lists the options, docs/evaluation.md the
conventions.
"""

import sys

from medseg.metrics.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
