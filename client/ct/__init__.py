"""Chest-CT sites: volumes, sources, the decode-once cache, slice references, training."""
