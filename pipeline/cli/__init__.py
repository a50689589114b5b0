"""The `cnnfeat` command: option parsing and terminal output only; the work is in features/ and pipeline/.

    cnnfeat extract --data data/digits --backbone all --workdir runs/digits
    cnnfeat train-head --workdir runs/digits
    cnnfeat ensemble --workdir runs/digits
    cnnfeat predict --model best --workdir runs/digits
    cnnfeat predict --model best --workdir runs/digits --images new/ photo.jpg
    cnnfeat export --model best --workdir runs/digits --output digits.pt2
    cnnfeat finetune --data data/digits --workdir runs/digits --backbone resnet34 --train-layers layer4
    cnnfeat run --data data/digits --workdir runs/digits        # all of the above
    cnnfeat info --workdir runs/digits

One module per command group: features.py (extract, prepare, info, backbones), heads.py (train-head,
ensemble, report), predict.py, finetune.py, run.py; common.py holds exit statuses, error handling,
shared options and progress bars. Start-up imports only click and the torch-free settings modules;
each command imports the stage code it runs when it runs, so `--help`, `--version`, `info` and
`prepare` never load torch.
"""

from __future__ import annotations

import logging

import click

from features import __version__

from . import features, finetune, heads, predict, run


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, "--version", prog_name="cnnfeat")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """cnnfeat: frozen-CNN features, linear probes and ensembles, Kaggle submissions."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


for _command in (features.extract_command, heads.train_head_command, heads.ensemble_command, predict.predict_command, predict.export_command,
                 finetune.finetune_command, run.run_command, heads.report_command, features.prepare_command,
                 features.info_command, features.backbones_command):
    main.add_command(_command)
