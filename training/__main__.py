"""``python -m training ...`` and ``torchrun --nproc_per_node K -m training ...``."""

import sys

from training.train import main

if __name__ == "__main__":
    sys.exit(main())
