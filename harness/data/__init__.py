"""Datasets: the manifest format and its validation, label and background content, the scene generator."""
from harness.data.content import background, label_content

__all__ = ["background", "label_content"]
