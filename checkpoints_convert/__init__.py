"""Converters from PyTorch (timm / DeiT) ViT state dicts to fastvit_jax's native Google layout."""
