"""`python -m pipeline ...` is the `cnnfeat` command (torchrun needs a module to run)."""

from pipeline.cli import main

main(prog_name="cnnfeat")
