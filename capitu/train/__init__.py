"""Training: seeded window sampling, AdamW with warmup and cosine decay, the loop."""
