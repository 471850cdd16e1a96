"""Coverage-guided fuzzing of ``vaeflow.decompress`` with atheris.

    python tests/fuzz/fuzz_decompress.py -runs=200000 [corpus_dir]

Inputs get their CRC32s recomputed half of the time (by the first byte's parity), so that
mutations reach the parsers behind the checksums. Any exception other than vaeflow's own
stream and model errors is a crash; atheris stops and writes the input to a file, which
belongs in tests/fuzz/corpus/ as a regression case.
"""

import contextlib
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for benchmarks.fuzz

with atheris.instrument_imports():
    import vaeflow
    from benchmarks.fuzz import recompute_crcs


def test_one_input(data: bytes) -> None:
    if not data:
        return
    body = bytearray(data[1:])
    if data[0] & 1:
        body = recompute_crcs(body)
    with contextlib.suppress(vaeflow.CorruptStreamError, vaeflow.ModelError):
        vaeflow.decompress(bytes(body))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
