"""Training vaeflow's own autoencoders (needs the ``train`` extra); ``vaeflow train`` through its entry point."""
