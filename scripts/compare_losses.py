"""Loss-comparison study: ``python scripts/compare_losses.py [--preset tiny|survey] [--out DIR] [--dry-run]``.

Trains the grid {bundle} × {loss} × {hyperparameter setting} × {seed} through the MONAI bundles, one folder per
run, skipping finished runs and redoing interrupted ones; then writes the survey's tables (CSV, markdown) and
plots (PNG). A thin wrapper over :func:`medseg.study.main`; ``--help`` lists the options, docs/study.md the
presets and the output.
"""

import sys

from medseg.study import main

if __name__ == "__main__":
    sys.exit(main())
