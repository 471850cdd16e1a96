"""PyTorch architectures (needs the ``train`` extra): the default model and the TAE family."""
