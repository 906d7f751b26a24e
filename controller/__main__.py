"""`python -m controller` runs `ctl` (used where the console script is not on PATH)."""

from controller.cli import main

main(prog_name="ctl")
