"""SmolVLM backbone loading, LoRA, speaking / DST-update heads, losses and the LightningModule."""
