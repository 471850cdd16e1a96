"""Pure codec stages: numpy in, numpy out, each a forward/inverse pair with a frozen params dataclass."""
