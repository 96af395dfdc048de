"""Data tools: corpus reading, tokenizer training/loading, parallel preprocessing to megatron indexed datasets.

Importing this package is cheap on purpose (no torch, no transformers): preprocessing workers import
only what they need, and megatron-core is imported by the writer alone.
"""
