"""Anomaly detection methods behind one interface (:class:`AnomalyMethod`), with their traits
and the registry (:func:`register_method`)."""
from mambaad_lib.methods.base import (
    METHODS, PROFILE_SIZES, AnomalyMethod, LearningType, StepLoop, TrainingData, get_method, get_method_class,
    register_method)
from mambaad_lib.methods.training import TrainConfig

__all__ = ["METHODS", "PROFILE_SIZES", "AnomalyMethod", "LearningType", "StepLoop", "TrainConfig", "TrainingData",
           "get_method", "get_method_class", "register_method"]
