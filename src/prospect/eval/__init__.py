"""Evaluation: ProAssist-compatible matching of predicted and reference turns, and the metrics built on it."""

from prospect.eval.dst_metrics import dst_scores, reference_states, state_accuracy
from prospect.eval.matching import WINDOWS, match_video, stream_scores

__all__ = ["WINDOWS", "dst_scores", "match_video", "reference_states", "state_accuracy", "stream_scores"]
