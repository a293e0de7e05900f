"""Trainable attention kernels (family ``kernel``): training-time replacements of softmax attention."""
