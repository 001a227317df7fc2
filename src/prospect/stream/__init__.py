"""Streaming inference: the KV-cache generator, cache surgery and compression strategies."""

from prospect.stream.generator import FrameRecord, StreamingGenerator
from prospect.stream.strategies import make_strategy

__all__ = ["FrameRecord", "StreamingGenerator", "make_strategy"]
