"""Data: read sources, clean, deduplicate, split, tokenize, write token files."""
