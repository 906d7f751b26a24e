"""`python -m trainctl` runs `ctl` (used where the console script is not on PATH)."""

from trainctl.cli import main

main(prog_name="ctl")
