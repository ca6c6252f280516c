"""Anomaly detection methods behind one interface (:class:`AnomalyMethod`)."""
from mambaad_lib.methods.base import METHODS, AnomalyMethod, get_method, get_method_class

__all__ = ["METHODS", "AnomalyMethod", "get_method", "get_method_class"]
