"""Proxy tasks: data, model head, loss, metric and the train/eval loop."""
from .base import Task

__all__ = ["Task"]
