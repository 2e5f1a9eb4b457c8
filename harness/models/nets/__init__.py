"""Architectures. Importing this package registers every factory in harness.registry."""
from harness.models.nets import (
    hrnet,  # noqa: F401
    lite_hrnet,  # noqa: F401
    pidnet,  # noqa: F401
    reference_sdecoder,  # noqa: F401
    stegastamp,  # noqa: F401
)
