"""Fusion methods: the registry, classical baselines and the learned families."""
from .registry import ClassInfo, Method, build_runner, get_method, list_methods, register

__all__ = ["ClassInfo", "Method", "build_runner", "get_method", "list_methods", "register"]
