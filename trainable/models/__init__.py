"""Classifiers (normalisation inside, inputs in [0, 1])."""
from trainable.models.classifiers import (CLASSIFIERS, NORMALIZATION, LeNet5, Normalize, ResNet20, build_classifier,
                                          count_parameters)

__all__ = ["CLASSIFIERS", "NORMALIZATION", "LeNet5", "Normalize", "ResNet20", "build_classifier", "count_parameters"]
