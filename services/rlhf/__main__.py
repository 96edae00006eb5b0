"""`python -m rlhf ...` (and `torchrun -m rlhf ...`): the same as the `rlhf` command."""

import sys

from rlhf.cli import main

sys.exit(main())
