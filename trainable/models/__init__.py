"""Classifiers: the registry of architectures (normalisation inside, inputs in [0, 1]) and their builder."""
from trainable.models.classifiers import LeNet5, Normalize, ResNet20, build_classifier, count_parameters
from trainable.models.registry import CLASSIFIERS, ClassifierEntry

__all__ = ["CLASSIFIERS", "ClassifierEntry", "LeNet5", "Normalize", "ResNet20", "build_classifier", "count_parameters"]


def __getattr__(name: str):
    if name == "NORMALIZATION":  # the view of earlier versions, derived from the dataset registry
        from trainable.data.registry import DATASETS

        return {n: (e.mean, e.std) for n, e in DATASETS.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
