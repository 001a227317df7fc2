"""SmolVLM with LoRA on its text model, frames injected as embeddings, and the two per-frame heads.

Frames are encoded by `vision.encode_frames` and scattered into the `<image>` token slots of the text
embeddings; the text model then runs on embeddings, which is also how streaming and cached frame features
feed it. Only the hidden states the losses read are gathered: decision positions for the heads, learned-token
positions for the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from transformers import SmolVLMForConditionalGeneration

from prospect.data.batch import Batch
from prospect.model.hashing import fingerprint
from prospect.model.heads import BinaryHead
from prospect.model.vision import check_tokens_per_frame, embed_with_frames, encode_frames

# LoRA on the text model's attention and MLP projections only (not the vision encoder).
TEXT_PROJECTIONS = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class ProspectOutput:
    """What one forward pass gives the losses and metrics; the labels and masks stay in the Batch."""

    speaking_logits: Tensor  # [D] at every decision frame (the loss reads those in batch.decision_mask)
    dst_update_logits: Tensor  # [D]
    lm_logits: Tensor  # [L, V] at the positions whose next token is a learned reply token
    dst_gen_logits: Tensor  # [G, V] at the positions whose next token is learned DST text


LEGACY_PREFIX = "backbone."  # what the frozen weights' names in a base fingerprint start with (base_fingerprint)


class ProspectModel(nn.Module):
    def __init__(
        self,
        vlm: SmolVLMForConditionalGeneration,
        tokens_per_frame: int,
        head: str = "linear",
        head_mlp_hidden: int = 256,
        head_dropout: float = 0.0,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target_modules: str = TEXT_PROJECTIONS,
        train_connector: bool = False,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        check_tokens_per_frame(vlm, tokens_per_frame)
        self.tokens_per_frame = tokens_per_frame
        if gradient_checkpointing:
            vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.peft_model = get_peft_model(vlm, LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                                          target_modules=lora_target_modules))
        for p in self.vlm.model.connector.parameters():
            p.requires_grad_(train_connector)
        hidden = vlm.config.text_config.hidden_size
        self.speaking_head = BinaryHead(hidden, head, head_mlp_hidden, head_dropout)
        self.dst_head = BinaryHead(hidden, head, head_mlp_hidden, head_dropout)
        self.train()  # from_pretrained returns eval mode, which would silently switch off LoRA dropout

    @property
    def vlm(self) -> SmolVLMForConditionalGeneration:
        """The underlying transformers model (LoRA layers injected in place)."""
        return self.peft_model.base_model.model

    def base_fingerprint(self) -> str:
        """Identity of the frozen weights, which checkpoints do not hold (see hashing.fingerprint). They are named
        as before issue #25 renamed `backbone` to `peft_model`, so that earlier checkpoints and exports still match."""
        return fingerprint((f"{LEGACY_PREFIX}{n}", p) for n, p in self.peft_model.named_parameters()
                           if not p.requires_grad)

    @property
    def text_model(self) -> nn.Module:
        return self.vlm.model.text_model

    def encode_frames(self, pixel_values: Tensor) -> Tensor:
        return encode_frames(self.vlm, pixel_values, self.tokens_per_frame)

    def forward(self, batch: Batch) -> ProspectOutput:
        feats = batch.frame_features
        if feats is None and batch.pixel_values.numel():
            feats = self.encode_frames(batch.pixel_values)
        embeds = embed_with_frames(self.vlm, batch.input_ids, feats)
        hidden = self.text_model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
        decision = hidden[batch.decision_batch, batch.decision_pos]  # [D, H]
        lm_head = self.vlm.lm_head
        return ProspectOutput(
            speaking_logits=self.speaking_head(decision), dst_update_logits=self.dst_head(decision),
            lm_logits=lm_head(hidden[batch.lm_batch, batch.lm_pos]),
            dst_gen_logits=lm_head(hidden[batch.dst_gen_batch, batch.dst_gen_pos]))
