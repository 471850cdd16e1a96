"""Converting PyTorch VAEs to ONNX and registering them (needs torch: ``pip install 'vaeflow[convert]'``;
``vaeflow.convert.diffusers_vae`` also needs diffusers: ``pip install 'vaeflow[diffusers]'``).

Nothing in vaeflow's core imports this package; ``vaeflow models import`` does, when asked.
"""
