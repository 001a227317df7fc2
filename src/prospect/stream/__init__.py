"""Streaming inference: the generator and its per-stream state, the KV-cache state and surgery, turn decoding,
DST tracking and compression strategies."""

from prospect.stream.generator import FrameInput, FrameRecord, Stream, StreamingGenerator
from prospect.stream.strategies import make_strategy

__all__ = ["FrameInput", "FrameRecord", "Stream", "StreamingGenerator", "make_strategy"]
