"""`python -m saekit ...` (what torchrun runs: `torchrun --nproc-per-node N -m saekit train`)."""

from saekit.cli.main import main

raise SystemExit(main())
