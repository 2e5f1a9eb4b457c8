"""The reference SDecoder of the embedded world, registered as an sdecoder (no weights: buffers from the key)."""
from __future__ import annotations

from harness.codec import CodecConfig, ReferenceSDecoder
from harness.models.registry import register_model


@register_model("sdecoder")
def reference_sdecoder(key: int = 0, config: CodecConfig = CodecConfig()) -> ReferenceSDecoder:
    """The hand-designed decoder matching `harness.codec.embed` for `key`."""
    return ReferenceSDecoder(key=key, config=config)
