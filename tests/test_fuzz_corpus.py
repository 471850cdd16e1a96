"""The fuzzing regression corpus: every input the harnesses ever crashed on stays a clean error."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

import vaeflow
from benchmarks.fuzz import build_seed_store, recompute_crcs, store_target
from vaeflow.foundations.errors import CorruptStreamError, ModelError, VaeflowError

CORPUS = Path(__file__).parent / "fuzz" / "corpus"


def _corpus_stream(data: bytes) -> bytes:
    body = bytearray(data[1:])
    return bytes(recompute_crcs(body) if data[0] & 1 else body)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("stream-*.bin")), ids=lambda p: p.name)
def test_stream_regression_corpus(path: Path) -> None:
    with pytest.raises((CorruptStreamError, ModelError)):
        vaeflow.decompress(_corpus_stream(path.read_bytes()))


def test_store_regression_corpus(tmp_path: Path) -> None:
    seed = build_seed_store(tmp_path)
    cases = sorted(CORPUS.glob("store-*.json"))
    assert cases
    for case in cases:
        entry = json.loads(case.read_text())
        target = seed / entry["file"]
        original = target.read_bytes()
        target.write_bytes(base64.b64decode(entry["data"]))
        try:
            store_target(seed)
        except VaeflowError:
            pass
        finally:
            target.write_bytes(original)
