"""Foundations: what every layer above may use (errors, bytes, files, images, metrics, timing, ...)."""
