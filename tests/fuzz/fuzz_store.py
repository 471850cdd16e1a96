"""Coverage-guided fuzzing of ``vaeflow.open_store`` (and reading, verifying) with atheris.

    python tests/fuzz/fuzz_store.py -runs=20000

The input picks one file of a small seed store and replaces its bytes; the store is then
opened, listed, read and verified. Any exception other than ``vaeflow.VaeflowError`` is a
crash; store it in tests/fuzz/corpus/ as ``store-NN.json`` ({"file", "data" in base64}).
"""

import shutil
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for benchmarks.fuzz

with atheris.instrument_imports():
    import vaeflow
    from benchmarks.fuzz import build_seed_store, store_target

ROOT = Path(tempfile.mkdtemp())
SEED = build_seed_store(ROOT)
FILES = sorted(p.relative_to(SEED) for p in SEED.rglob("*") if p.is_file())
WORK = ROOT / "work.zarr"
shutil.copytree(SEED, WORK)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    victim = FILES[data[0] % len(FILES)]
    (WORK / victim).write_bytes(data[1:])
    try:
        store_target(WORK)
    except vaeflow.VaeflowError:
        pass
    finally:
        (WORK / victim).write_bytes((SEED / victim).read_bytes())


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
