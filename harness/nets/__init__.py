"""Architectures. Importing this package registers every factory in harness.registry."""
from harness.nets import hrnet  # noqa: F401
from harness.nets import pidnet  # noqa: F401
from harness.nets import reference_sdecoder  # noqa: F401
from harness.nets import lite_hrnet  # noqa: F401
from harness.nets import stegastamp  # noqa: F401
