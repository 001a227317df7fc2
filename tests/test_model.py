"""Model pieces against independent computations: SmolVLM's own forward, hand-worked losses, saved checkpoints."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_sequence import hand_clip

from prospect.data.batch import Sample, collate
from prospect.data.sequence import SequenceBuilder, decision_mask
from prospect.model.backbone import architecture_config, load_backbone
from prospect.model.losses import LossConfig, binary_loss, total_loss
from prospect.model.prospect_model import ProspectModel
from prospect.model.vision import pixels


def _sample(builder, size, seed=0):
    (seq,) = builder.build(hand_clip())
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in seq.frames]
    return Sample(seq, pixels(images, size), decision_mask(seq, 1.0, rng))


def test_forward_equals_smolvlm_own_forward(tiny_dir):
    """With the full connector grid (no pooling) and LoRA at its zero init, our embedding-injection forward
    gives the logits of SmolVLMForConditionalGeneration(input_ids, pixel_values)."""
    vlm, tok = load_backbone(str(tiny_dir))
    tpf = vlm.model.image_seq_len
    builder = SequenceBuilder(tok, tpf)
    size = vlm.config.vision_config.image_size
    batch = collate([_sample(builder, size, 0), _sample(builder, size, 1)], tok.pad_token_id)
    model = ProspectModel(vlm, tpf).eval()
    with torch.no_grad():
        out = model(batch)
        ref = vlm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  pixel_values=batch.pixel_values.view(2, -1, *batch.pixel_values.shape[1:])).logits
    torch.testing.assert_close(out["lm_logits"], ref[batch.lm_batch, batch.lm_pos], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["dst_logits"], ref[batch.dst_batch, batch.dst_pos], atol=1e-4, rtol=1e-4)


def test_pooled_tokens_per_frame(tiny_dir):
    vlm, tok = load_backbone(str(tiny_dir))
    model = ProspectModel(vlm, 4)
    x = pixels([Image.new("RGB", (64, 64), (200, 10, 10))] * 3, 64)
    feats = model.encode_frames(x)
    full = vlm.model.connector(vlm.model.vision_model(pixel_values=x).last_hidden_state)  # [3, 16, H]
    grid = full.view(3, 4, 4, -1)
    expected = grid.view(3, 2, 2, 2, 2, -1).mean(dim=(2, 4)).reshape(3, 4, -1)  # 2x2 blocks of the 4x4 grid
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="tokens_per_frame=3"):
        ProspectModel(vlm, 3)


def test_class_balanced_bce_hand_worked():
    logits = torch.tensor([0.0, 2.0, -1.0])
    labels = torch.tensor([1.0, 0.0, 0.0])
    pos = math.log(2)  # -log sigmoid(0)
    neg = (math.log1p(math.exp(2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert binary_loss(logits, labels, LossConfig()).item() == pytest.approx((pos + neg) / 2, rel=1e-6)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=torch.tensor(3.0))
    assert binary_loss(logits, labels, LossConfig(balance="pos_weight", pos_weight=3.0)).item() == pytest.approx(
        plain.item())


def test_no_positive_frames_gives_finite_loss_and_gradients_to_heads(tiny_dir):
    vlm, tok = load_backbone(str(tiny_dir))
    builder = SequenceBuilder(tok, 4)
    sample = _sample(builder, vlm.config.vision_config.image_size)
    sample.seq.speaking = [0] * len(sample.seq.frames)
    sample.seq.dst_update = [0] * len(sample.seq.frames)
    sample.mask = [False] * len(sample.seq.frames)  # not even a negative frame in this batch
    sample.seq.lm_targets = [-100] * len(sample.seq)
    batch = collate([sample], tok.pad_token_id)
    model = ProspectModel(vlm, 4)
    losses = total_loss(model(batch), LossConfig())
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    for head in (model.speaking_head, model.dst_head):
        assert all(p.grad is not None for p in head.parameters()), "heads must stay in the graph (DDP)"


def test_lora_only_on_text_model_and_trainable_state(tiny_dir):
    vlm, _ = load_backbone(str(tiny_dir))
    model = ProspectModel(vlm, 4, train_connector=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k or "_head." in k for k in trainable)
    assert any("text_model" in k for k in trainable) and not any("vision_model" in k for k in trainable)
    with_connector = [n for n, p in ProspectModel(load_backbone(str(tiny_dir))[0], 4, train_connector=True)
                      .named_parameters() if p.requires_grad]
    assert any("connector" in k for k in with_connector)


def test_real_architecture_shapes():
    cfg = architecture_config("smolvlm2-256m")
    assert (cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.text_config.num_key_value_heads,
            cfg.text_config.head_dim) == (576, 30, 3, 64)
    with torch.device("meta"):
        from transformers import SmolVLMForConditionalGeneration

        model = SmolVLMForConditionalGeneration(cfg)
    assert model.model.image_seq_len == 64
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(256.5e6, rel=1e-3)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir):
    grads = []
    for checkpointing in (False, True):
        vlm, tok = load_backbone(str(tiny_dir))
        torch.manual_seed(0)
        model = ProspectModel(vlm, 4, lora_dropout=0.0, gradient_checkpointing=checkpointing).train()
        batch = collate([_sample(SequenceBuilder(tok, 4), vlm.config.vision_config.image_size)], tok.pad_token_id)
        total_loss(model(batch), LossConfig())["total"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)
