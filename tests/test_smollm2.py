"""SmolVLM-256M's language model offline (prospect.model.smollm2), against transformers' own reading of the GGUF
file: the same logits, a pretrained instruct model's answers, SmolVLM's special tokens as single ids."""

import shutil
import subprocess

import pytest
import torch
from conftest import REPO
from test_sequence import hand_clip

from prospect.data.sequence import AROUND_IMAGE, END_OF_TURN, GLOBAL_IMAGE, IMAGE, TURN_START, SequenceBuilder
from prospect.model import smollm2
from prospect.model.backbone import load_backbone

MODELS = REPO / "models"  # where model=smolvlm_256m_local fetches the file: one download per checkout


@pytest.fixture(scope="session")
def gguf():
    return smollm2.fetch_gguf(MODELS)


@pytest.fixture(scope="session")
def local(gguf, smollm2_dir):
    """The built model and the GGUF model as transformers reads it."""
    vlm, tokenizer = load_backbone(str(smollm2_dir))
    return vlm.eval(), tokenizer, *smollm2.load_gguf(gguf)


def test_the_file_is_fetched_once_and_checked(gguf, tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the file is there")

    monkeypatch.setattr(subprocess, "run", no_download)
    assert smollm2.fetch_gguf(MODELS) == gguf
    shutil.copy(gguf, tmp_path / smollm2.GGUF_FILE)
    with open(tmp_path / smollm2.GGUF_FILE, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"\x00\x01")
    with pytest.raises(smollm2.GgufFileError, match=f"{smollm2.GGUF_FILE}: sha256 .* expected {smollm2.GGUF_SHA256}"):
        smollm2.fetch_gguf(tmp_path)


def test_text_model_logits_equal_the_gguf_model(local):
    vlm, tokenizer, lm, lm_tokenizer = local
    text = "To make tea, boil the water, put a tea bag in the cup and pour the water. Then wait three minutes."
    ids = lm_tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids  # 5.0 adds a BOS, 5.24 not
    assert ids[0].tolist() == tokenizer(text, add_special_tokens=False).input_ids
    with torch.no_grad():
        expected = lm(ids).logits  # [1, T, 49152]
        ours = vlm.lm_head(vlm.model.text_model(input_ids=ids).last_hidden_state)  # [1, T, 49280]
    pad = tokenizer.pad_token_id  # its output row moved to <end_of_utterance> (smollm2's docstring)
    keep = torch.arange(expected.shape[-1]) != pad
    torch.testing.assert_close(ours[..., :expected.shape[-1]][..., keep], expected[..., keep], atol=1e-5, rtol=1e-5)
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    torch.testing.assert_close(ours[..., eot], expected[..., pad], atol=1e-5, rtol=1e-5)


def test_greedy_answer_names_the_step(local):
    """No frames, no LoRA: the weights are a pretrained instruct model, which answers in its own chat format and
    ends its turn with SmolVLM's end-of-turn token."""
    vlm, tokenizer, _, _ = local
    steps = "1. boil the water\n2. put a tea bag in the cup\n3. pour the water into the cup"
    prompt = (f"<|im_start|>user\nTo make tea, the steps are:\n{steps}\nWhat is the first step?{END_OF_TURN}\n"
              "<|im_start|>assistant\n")
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False).input_ids])
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    out = vlm.generate(ids, max_new_tokens=128, do_sample=False, eos_token_id=eot)
    answer = tokenizer.decode(out[0, ids.shape[1]:])
    assert "boil the water" in answer.lower() and answer.endswith(END_OF_TURN), answer


def test_our_prompts_keep_smolvlm_special_tokens_whole(local):
    _, tokenizer, _, _ = local
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (GLOBAL_IMAGE, AROUND_IMAGE, IMAGE, END_OF_TURN)}
    assert ids == {GLOBAL_IMAGE: 49152, AROUND_IMAGE: 49189, IMAGE: 49190, END_OF_TURN: 49279}
    assert len(tokenizer) == 49280 and tokenizer.pad_token == "<|im_end|>"
    builder = SequenceBuilder(tokenizer, 4)
    (seq,) = builder.build(hand_clip())
    n_frames, n_turns = len(seq.frames), 4  # system, user, DST, assistant
    count = lambda i: seq.input_ids.count(i)  # noqa: E731
    assert count(ids[IMAGE]) == 4 * n_frames and count(ids[GLOBAL_IMAGE]) == n_frames
    assert count(ids[AROUND_IMAGE]) == 2 * n_frames
    assert count(ids[END_OF_TURN]) == count(tokenizer.convert_tokens_to_ids(TURN_START)) == n_turns
    # the rendered text tokenizes back to the very ids: no special token is split or merged with text
    assert tokenizer(tokenizer.decode(seq.input_ids), add_special_tokens=False).input_ids == seq.input_ids


def test_the_default_model_trains_streams_and_exports(smollm2_dir, tmp_path):
    """The run users run (`+experiment=perframe` on the default model, in its bf16 autocast) shrunk: two training
    steps with SmolVLM's tokenizer layout, streaming validation of one clip, then the exported adapter streams as
    the checkpoint."""
    from itertools import islice

    from conftest import compose_train

    from prospect.data.load import load_clips
    from prospect.model.factory import load_checkpoint
    from prospect.model.pretrained import export
    from prospect.stream import StreamingGenerator
    from prospect.train import train

    cfg = compose_train(tmp_path, ["+experiment=perframe", "model=smolvlm_256m_local", "trainer.precision=bf16-mixed",
                                   "trainer.max_epochs=1", "test=false",
                                   "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1"])
    metrics = train(cfg)
    assert metrics["train/loss"] > 0 and "stream/none/f1" in metrics
    ckpt = load_checkpoint(metrics["checkpoint"])
    assert ckpt.config["model"]["backbone"]["source"] == str(smollm2_dir)
    out = export(ckpt, tmp_path / "model")
    clip = load_clips(tmp_path / "data" / "test.jsonl")[0]
    kwargs = {"speaking_threshold": 0.0, "max_new_tokens": 3}
    want = list(islice(StreamingGenerator.from_pretrained(metrics["checkpoint"], **kwargs).stream(clip), 3))
    got = list(islice(StreamingGenerator.from_pretrained(str(out), **kwargs).stream(clip), 3))
    assert [(r.text, r.dst_text) for r in got] == [(r.text, r.dst_text) for r in want]  # test_export: non-empty
    assert [r.speaking_prob for r in got] == pytest.approx([r.speaking_prob for r in want], abs=1e-5)


def test_the_default_cuts_its_training_clips_as_restarts_leave_the_cache(local, tmp_path):
    """Issue #24: at 4 tokens per frame the default's training clips were shorter than data.restart_len, so the
    model almost never saw a restarted prompt. With the default data config every training clip is longer than
    restart_len (so a clip of the restart share is cut at least once), and a test video, said as the reference
    says it, holds more tokens than two dst_state_1k compressions need (the setting that restarts with the most
    room: the prompt alone): the first comes when the cache cannot hold a frame and its turns (`room`) within the
    budget, the second once the restarted prompt has grown to that again."""
    from hydra import compose, initialize_config_dir

    from prospect.data.synthetic import synthesize
    from prospect.stream import StreamingGenerator
    from prospect.stream.generator import StreamOptions
    from prospect.stream.strategies import make_strategy

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=perframe"])
    settings = {k: v for k, v in cfg.data.synthetic.items() if k not in ("val_videos", "test_videos")}
    clips = synthesize(tmp_path, 12, cfg.seed, val_videos=0, test_videos=1, **{**settings, "image_size": 16})
    vlm, tokenizer = local[:2]
    b = SequenceBuilder(tokenizer, cfg.model.tokens_per_frame, cfg.model.system_prompt)
    assert min(len(b.build(c)[0]) for c in clips["train"]) > cfg.data.restart_len
    for clip in clips["train"]:  # the shortest length a cut clip may draw holds every part of either layout
        for restart in ("summarize", "dst_state"):
            assert len(b.build(clip, cfg.data.restart_len * 2 // 3, restart)) >= 2
    gen = StreamingGenerator.untrained(vlm, tokenizer, cfg.model.tokens_per_frame,
                                       max_new_tokens=cfg.stream.max_new_tokens)
    test = clips["test"][0]
    stream = gen.stream(test, options=StreamOptions(make_strategy("dst_state_1k")))
    budget, prompt = stream.strategy.budget, len(stream.prompt())
    need = 2 * (budget - stream.room) - prompt
    assert len(b.build(test)[0]) > need > 1500, need
