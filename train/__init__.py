"""Data preparation and the QLoRA trainer (heavy imports stay inside functions)."""
