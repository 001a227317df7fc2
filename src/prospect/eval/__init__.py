"""Evaluation: ProAssist-compatible matching of predicted and reference turns, and the metrics built on it."""

from prospect.eval.matching import WINDOWS, match_video, stream_scores

__all__ = ["WINDOWS", "match_video", "stream_scores"]
