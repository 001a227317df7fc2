"""Model pieces against independent computations: SmolVLM's own forward, hand-worked losses, saved checkpoints."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from test_sequence import hand_clip

from prospect.data.batch import Sample, collate
from prospect.data.sequence import SequenceBuilder, decision_mask
from prospect.model.backbone import architecture_config, load_backbone
from prospect.model.hashing import fingerprint
from prospect.model.heads import BinaryHead
from prospect.model.losses import LossConfig, binary_loss, total_loss
from prospect.model.prospect_model import ProspectModel
from prospect.model.vision import pixels


def _sample(builder, size, seed=0):
    return _sample_of(builder, size, hand_clip(), seed)


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
    torch.testing.assert_close(out.lm_logits, ref[batch.lm_batch, batch.lm_pos], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.dst_gen_logits, ref[batch.dst_gen_batch, batch.dst_gen_pos], atol=1e-4, rtol=1e-4)


def test_padded_batch_of_unequal_lengths_equals_each_sample_alone(tiny_dir):
    """Right padding and the attention mask leave every real position as it is: a batch of a long and a short
    sequence gives each one's logits of a forward pass over it alone, at decision, reply and DST text positions."""
    vlm, tok = load_backbone(str(tiny_dir))
    builder, size = SequenceBuilder(tok, 4), vlm.config.vision_config.image_size
    clip = hand_clip()
    longer = replace(clip, video=replace(clip.video, end_frame=16))  # three more silent frames
    samples = [_sample_of(builder, size, longer, 0), _sample_of(builder, size, clip, 1)]
    assert len(samples[0].seq) > len(samples[1].seq)
    model = ProspectModel(vlm, 4, head="mlp").eval()
    with torch.no_grad():
        both = model(collate(samples, tok.pad_token_id))
        alone = [model(collate([s], tok.pad_token_id)) for s in samples]
    for key in ("speaking_logits", "dst_update_logits", "lm_logits", "dst_gen_logits"):
        expected = torch.cat([getattr(out, key) for out in alone])
        torch.testing.assert_close(getattr(both, key), expected, atol=1e-5, rtol=1e-5, msg=key)


def _sample_of(builder, size, clip, seed):
    (seq,) = builder.build(clip)
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in seq.frames]
    return Sample(seq, pixels(images, size), decision_mask(seq, 1.0, rng))


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


def test_focal_and_plain_bce_hand_worked():
    logits, labels = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    per = [math.log(2), math.log1p(math.exp(2.0))]  # -log sigmoid(0), -log(1 - sigmoid(2))
    p_true = [0.5, 1 / (1 + math.exp(2.0))]  # the probability each frame's label gets
    assert binary_loss(logits, labels, LossConfig(balance="plain")).item() == pytest.approx(sum(per) / 2, rel=1e-6)
    focal = sum((1 - p) ** 3 * x for p, x in zip(p_true, per, strict=True)) / 2
    assert binary_loss(logits, labels, LossConfig(balance="focal", focal_gamma=3.0)).item() == pytest.approx(
        focal, rel=1e-6)
    with pytest.raises(ValueError, match="loss.balance"):
        binary_loss(logits, labels, LossConfig(balance="median"))


def test_mlp_head_hand_worked():
    head = BinaryHead(2, "mlp", mlp_hidden=2)
    with torch.no_grad():
        first, last = head.layers[0], head.layers[3]
        first.weight.copy_(torch.eye(2)), first.bias.zero_()
        last.weight.copy_(torch.tensor([[1.0, -1.0]])), last.bias.fill_(0.5)
    gelu = lambda x: x * 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    out = head(torch.tensor([[1.0, -2.0], [0.0, 0.0]]))
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([gelu(1.0) - gelu(-2.0) + 0.5, 0.5], rel=1e-6)
    with pytest.raises(ValueError, match="'linear' or 'mlp'"):
        BinaryHead(2, "conv")


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
    losses = total_loss(model(batch), batch, LossConfig())
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
        total_loss(model(batch), batch, LossConfig())["total"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_base_fingerprint_keeps_the_names_checkpoints_were_written_with(tiny_dir):
    """Checkpoints and exports store the fingerprint of the frozen weights, named as the network named them before
    issue #25 (`backbone.base_model.model...`); renaming the attribute to `peft_model` must not change it, or every
    earlier checkpoint would be refused as trained on another base model."""
    vlm, _ = load_backbone(str(tiny_dir))
    net = ProspectModel(vlm, 4)
    frozen = [(n, p) for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("peft_model.") for n, _ in frozen)
    before = fingerprint(("backbone." + n.removeprefix("peft_model."), p) for n, p in frozen)
    assert net.base_fingerprint() == before
    assert fingerprint(frozen) != before  # the names count: the old ones are what keeps earlier fingerprints
