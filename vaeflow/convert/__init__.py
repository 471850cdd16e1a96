"""Converting PyTorch VAEs to ONNX and registering them (needs torch: ``pip install 'vaeflow[convert]'``).

Nothing in vaeflow's core imports this package; ``vaeflow models import`` does, when asked.
"""
