"""The entropy coders behind the ``Entropy`` stage, and the rANS helpers they share."""
