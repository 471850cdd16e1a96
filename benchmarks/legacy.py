"""A re-implementation of the earlier design's quantizer and coder, as a baseline.

Per subband, coefficients are mapped linearly from [min, max] onto ``levels`` codes of a
uint8 (the design used all 256), with min and max stored as float32. One histogram of
the codes, as 256 float32 probabilities (1 KiB), is stored with the stream, and the codes
are coded with ANS under that table. ``levels`` traces a rate-distortion curve.
"""

from __future__ import annotations

import constriction
import numpy as np

from vaeflow.stages.wavelet import Subband

TABLE_BYTES = 256 * 4
HEADER_BYTES = 16


def code(coeffs: np.ndarray, bands: tuple[Subband, ...], levels: int = 256) -> tuple[int, np.ndarray]:
    """One image's coefficients (C, h, w) -> (stream bytes, reconstructed coefficients)."""
    codes = np.zeros(coeffs.shape, np.int32)
    recon = np.zeros(coeffs.shape, np.float32)
    side = 0
    for c in range(coeffs.shape[0]):
        for band in bands:
            x = coeffs[c, band.rows, band.cols].astype(np.float64)
            lo, hi = float(x.min()), float(x.max())
            span = hi - lo if hi > lo else 1.0
            q = np.rint((x - lo) / span * (levels - 1)).astype(np.int32)
            codes[c, band.rows, band.cols] = q
            recon[c, band.rows, band.cols] = lo + q / (levels - 1) * span
            side += 8  # float32 min and max
    counts = np.bincount(codes.ravel(), minlength=256).astype(np.float32)
    table = counts / counts.sum()
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(codes.ravel(), constriction.stream.model.Categorical(table, perfect=False))
    n_bytes = HEADER_BYTES + side + TABLE_BYTES + 4 * coder.num_words()
    return n_bytes, recon
