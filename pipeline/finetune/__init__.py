"""Fine-tuning: images -> a trained backbone (finetuned/<backbone>.pt). Depends on features only.

    from pipeline.finetune import FinetuneConfig, finetune
    result = finetune(FinetuneConfig(data="data/digits", workdir="runs/digits", backbone="resnet34"))

    config.py    FinetuneConfig: the settings, each default once
    data.py      the split rule's training and validation images, decoded as extraction does
    network.py   the architecture with a new classifier; which blocks train
    train.py     the loop (train_one_epoch, evaluate), resumable; writes the checkpoint
    predict.py   the fine-tuned network on a split's images, or on any images
"""

from features.lazy import lazy_exports

_EXPORTS = {
    "config": ("AUGMENTS", "FINETUNED_PREFIX", "OPTIMIZERS", "SCHEDULES", "FinetuneConfig", "checkpoint_file",
               "finetuned_dir", "model_name"),
    "predict": ("Network", "NetworkPredictions", "load_network", "network_predictions", "network_proba", "trained_data"),
    "train": ("FinetuneResult", "finetune"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__ = lazy_exports(__name__, _EXPORTS)
