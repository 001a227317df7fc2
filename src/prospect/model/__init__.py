"""SmolVLM backbone loading, the vision path and its frame feature store, LoRA, speaking / DST-update heads, the
model factory and checkpoint loader, losses and the LightningModule."""
