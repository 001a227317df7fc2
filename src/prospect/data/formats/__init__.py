"""Readers of annotation files in the formats we import: ours (ours.py), ProAssist's prepared clips
(proassist.py) and DST clips (dst_clips.py), each record into a checked Clip, its problems collected through typed
field access (fields.py). Which reader takes a record is decided in prospect.data.load."""
