"""Loss behaviour explorer: ``python scripts/loss_landscape.py --out DIR [--losses dice ce ...] [--dims 3]``.

As a prediction drifts off a large and a small object (Azad et al. 2023, Figure 3), does each loss rise
monotonically? Writes value and gradient-norm curves (CSV), a per-loss summary (CSV and markdown) and PNG plots.
A thin wrapper over :func:`medseg.analysis.landscape.main`; ``--help`` lists the options, docs/loss_landscape.md
the set-up and the results.
"""

import sys

from medseg.analysis.landscape import main

if __name__ == "__main__":
    sys.exit(main())
