"""Attention control of diffusers text-to-image denoisers (docs/diffusion.md)."""
