"""`python -m training.ml ...` (works under torchrun too: `torchrun --nproc_per_node=N -m training.ml ...`)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
