"""Datasets: the manifest format and its validation, label and background content, the scene generator."""
from harness.data.content import background, label_content
from harness.data.images import load_image, load_image_with_conversion
from harness.data.manifest import (
    MIN_SIDE,
    Dataset,
    DatasetError,
    Fault,
    Sample,
    dataset_hash,
    load_dataset,
    parse_secret,
    secret_to_str,
)

__all__ = [
    "MIN_SIDE", "Dataset", "DatasetError", "Fault", "Sample", "background", "dataset_hash",
    "label_content", "load_dataset", "load_image", "load_image_with_conversion", "parse_secret", "secret_to_str",
]
