"""Pretraining: megatron-core GPTModel (VersatileFFN or dense) + DeepSpeed ZeRO, from a YAML config.

Modules: config (typed config + overrides), checks (pre-flight file checks), data (GPTDataset blends),
engine (DeepSpeed + mpu adapter), checkpoint, metrics, train (the loop), __main__ (CLI), quickstart.
"""
