"""The pipeline on top of features: heads, fine-tuning, and the stages that join them.

    heads/         cached features -> models -> probabilities (never builds a backbone)
    finetune/      images -> a trained backbone (depends on features only)
    finetuned.py   the one door from the workdir's models to fine-tuned networks
    outputs.py     what every model leaves in the workdir: metrics, summary, submission frame
    predict.py     stage 4: the submission, from a head or a fine-tuned network
    inference.py   a trained model on new images: load_predictor(workdir, model).predict(images)
    export.py      a trained model as one file that runs without cnnfeat (torch.export, ONNX)
    status.py      which of the workdir's models are up to date
    report/        the offline HTML report: models, mistakes, label errors, near-duplicates
    run.py         `cnnfeat run`: every stage in order
    cli/           the `cnnfeat` command, one module per command group
"""

from features.lazy import lazy_exports

_EXPORTS = {"inference": ("Predictions", "Predictor", "load_predictor")}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_exports(__name__, _EXPORTS)
