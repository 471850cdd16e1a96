"""Training vaeflow's own autoencoders (needs the ``train`` extra; not part of the installed package)."""
