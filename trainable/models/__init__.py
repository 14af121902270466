"""Classifiers: the registry of architectures (normalisation inside, inputs in [0, 1]) and their builder."""
from trainable.models.classifiers import LeNet5, Normalize, ResNet20, build_classifier, count_parameters
from trainable.models.registry import CLASSIFIERS, ClassifierEntry

__all__ = ["CLASSIFIERS", "ClassifierEntry", "LeNet5", "Normalize", "ResNet20", "build_classifier", "count_parameters"]
