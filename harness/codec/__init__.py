"""The reference watermark codec: `embed(label, bits, key)` and the differentiable `ReferenceSDecoder(key)`."""
from harness.codec.embedding import embed
from harness.codec.layout import NUM_BITS, CodecConfig
from harness.codec.sdecoder import ReferenceSDecoder

__all__ = ["embed", "ReferenceSDecoder", "CodecConfig", "NUM_BITS"]
