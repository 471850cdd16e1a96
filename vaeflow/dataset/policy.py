"""What a job does with the store it is given, decided before anything runs.

``decide`` only reads: it compares the store's recorded settings with the job's and says
which of these the run is, and the attributes it starts from:

- ``create``: no store there yet;
- ``replace``: a store with other settings (``--overwrite``) or an interrupted run to start
  over (``--no-resume``): emptied when the job starts, never while planning;
- ``resume``: an interrupted run with the same settings, finished batches kept;
- ``append``: ``--add`` to a finished store, new files only;
- ``complete``: a finished store with nothing to add.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaeflow.codec.api import model_quality
from vaeflow.codec.codec import calibration_key
from vaeflow.dataset import store as store_io
from vaeflow.dataset.layout import EXACT_LATENTS, LAYOUT, META, SETTINGS, STATUS_OK, STORE_FORMAT, STORE_VERSION
from vaeflow.dataset.store import UNKNOWN_SOURCE
from vaeflow.foundations.errors import PipelineError, VaeflowError
from vaeflow.models import ModelRef
from vaeflow.stages import Entropy, Pipeline, Wavelet
from vaeflow.stages.entropy import AUTO, WRITER

log = logging.getLogger("vaeflow")

ACTIONS = ("create", "replace", "resume", "append", "complete")
CREATE, REPLACE, RESUME, APPEND, COMPLETE = ACTIONS
_V1_TARGET_KEYS = {"target_bpp": "bpp", "target_psnr": "psnr", "max_latent_error": "max_latent_error",
                   "max_psnr_drop": "max_psnr_drop"}  # fmt: skip


@dataclass(frozen=True)
class StorePolicy:
    action: str
    meta: dict[str, Any]  # the store attributes the run starts from
    known: frozenset[str] = field(default=frozenset())  # paths stored before (never coded again)
    retried: frozenset[str] = field(default=frozenset())  # failed paths coded again (their old rows dropped)
    only_retried: bool = False  # code the retried paths and no new files
    sources: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # stored: (size, mtime_ns)

    def changed(self, path: str, source: tuple[int, int]) -> bool:
        """Whether a stored image's file has another size or modification time than when it was coded (rows
        from before these were recorded never count as changed)."""
        recorded = self.sources.get(path)
        return recorded is not None and recorded != UNKNOWN_SOURCE and recorded != tuple(source)

    @property
    def first_row(self) -> int:
        """Where this run's rows start in the index: after the earlier rows it keeps."""
        return int(self.meta[META.rows]) - len(self.retried)

    @property
    def key_prefix(self) -> str:
        """Batches of an ``--add`` are named apart from the store's earlier ones."""
        generation = self.meta[META.generation]
        return f"a{generation}-" if generation else ""


def fresh_meta(settings: dict[str, Any]) -> dict[str, Any]:
    return {META.format: STORE_FORMAT, META.version: STORE_VERSION, META.settings: settings, META.complete: False,
            META.generation: 0, META.stored_bytes: 0, META.rows: 0}  # fmt: skip


def decide(
    store: Path, settings: dict[str, Any], *, add: bool, overwrite: bool, resume: bool, retry_failed: bool = False
) -> StorePolicy:
    existing = store_io.read_meta(store)
    if existing is None:
        if store.exists() and (not store.is_dir() or any(p.name != LAYOUT.lock for p in store.iterdir())):
            raise VaeflowError(f"{store} exists and is not a vaeflow store; choose another path")
        if add:
            raise VaeflowError(f"--add needs a finished store at {store}")
        return StorePolicy(CREATE, fresh_meta(settings))
    recorded = existing.get(META.settings)
    asked = comparable(settings)
    changed = differences(comparable(recorded, asked.get("codec", {}).get("entropy")), asked)
    changed += quality_hint(recorded, settings) if changed else ""
    complete = existing.get(META.complete)
    codes_more = add or retry_failed or not complete
    if not changed and codes_more and _padded_latents(recorded):
        log.warning(
            "%s was written before stream format 4: its latents were encoded padded to batch shapes; the images "
            "this run codes get the model's own latents (write a new store to have them all so)",
            store,
        )
    earlier_rows = int(existing.get(META.rows) or 0) > 0  # finished images from earlier runs
    extend = add or retry_failed
    if extend and changed:
        flag = "--add" if add else "--retry-failed"
        raise VaeflowError(f"{flag} needs the store's own settings; {store} differs in {changed}")
    if add and not (complete or existing.get(META.generation)):
        raise VaeflowError(f"--add needs a finished store, or an interrupted --add, at {store}")
    if changed:
        if not overwrite:
            raise VaeflowError(
                f"{store} was written with other settings ({changed}); "
                "pass --overwrite to replace it, or choose another path"
            )
        return StorePolicy(REPLACE, fresh_meta(settings))
    if not complete:
        if resume:  # an interrupted run: resume it, without the rows stored before an --add
            retrying, adding = bool(existing.get(META.retrying)), bool(existing.get(META.adding))
            return _extension(RESUME, store, existing, retrying, adding)
        if earlier_rows and not overwrite:  # --no-resume on an interrupted --add: finished images too
            raise VaeflowError(
                f"{store} holds images from earlier runs; run the same command again to finish the interrupted "
                "--add, or pass --overwrite with --no-resume to start the whole store over"
            )
        return StorePolicy(REPLACE, fresh_meta(settings))
    if extend:
        generation = int(existing[META.generation]) + 1
        meta = {**existing, META.complete: False, META.generation: generation, META.retrying: retry_failed,
                META.adding: add}  # fmt: skip
        return _extension(APPEND, store, meta, retry_failed, add)
    return StorePolicy(COMPLETE, existing, sources=store_io.recorded_sources(store, int(existing[META.rows])))


def _extension(action: str, store: Path, meta: dict[str, Any], retrying: bool, adding: bool) -> StorePolicy:
    """An ``--add`` or ``--retry-failed`` generation: what the index holds, and what is coded again."""
    index = store_io.previous_index(store, int(meta[META.rows]))
    failed = frozenset(p for p, s in zip(index.paths, index.status, strict=True) if s != STATUS_OK)
    retried = failed if retrying else frozenset()
    return StorePolicy(
        action,
        meta,
        frozenset(index.paths) - retried,
        retried,
        retrying and not adding,
        store_io.stored_sources(index.paths, index.sources, index.status),
    )


def apply(policy: StorePolicy, store: Path) -> None:
    """Carry out what planning decided: empty a store that is being replaced (keeping the lock)."""
    if policy.action != REPLACE or not store.exists():
        return
    for child in store.iterdir():
        if child.name != LAYOUT.lock:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def writing(pipeline: Pipeline) -> Pipeline:
    """A store's recorded pipeline as new images of it are written: a coder that only decodes (the
    store's earlier streams keep it) gives way to ``auto``, the coder of every new stream."""
    entropy = pipeline.stage("entropy")
    if isinstance(entropy, Entropy) and entropy.coder not in (AUTO, WRITER):
        return pipeline.with_stages(Entropy(AUTO))
    return pipeline


def comparable(settings: Any, writer: Any = None) -> dict[str, Any]:
    """The settings that decide a store's bytes, in today's form, without unset keys.

    Stores written before the one codec description (v1 settings) named the model beside its
    fingerprint, the entropy stage ``ans``, and kept rate targets inside the quantizer. An entropy
    coder that only decodes stands for ``writer`` (the entropy table of the settings compared with),
    since new images of such a store are written by the coder of every new stream.
    """
    if not isinstance(settings, dict):
        return {}
    model = settings.get("model")
    if isinstance(model, dict):
        identity = {"name": model.get("name"), "fingerprint": model.get("fingerprint")}
    else:
        identity = {"name": model, "fingerprint": settings.get("fingerprint")}
    codec = {k: dict(v) if isinstance(v, dict) else v for k, v in dict(settings.get("codec") or {}).items()}
    if "ans" in codec:
        codec["entropy"] = codec.pop("ans")
    quantize = codec.get("quantize")
    if isinstance(quantize, dict):
        target = {new: quantize.pop(old) for old, new in _V1_TARGET_KEYS.items() if quantize.get(old) is not None}
        for old in _V1_TARGET_KEYS:
            quantize.pop(old, None)
        if target:
            codec["target"] = target
    try:
        pipeline = Pipeline.from_dict(codec, "store settings")
        described = pipeline.to_dict()
        if writer is not None and writing(pipeline) != pipeline:
            described["entropy"] = writer
    except (PipelineError, TypeError):
        described = codec  # a store from a newer vaeflow, say: compared as written
    # latents: how the encoder padded, see decide
    ignored = ("model", "fingerprint", "codec", SETTINGS.pipeline, SETTINGS.latents)
    rest = {k: v for k, v in settings.items() if k not in ignored}
    return _given({"model": identity, "codec": described, **rest})


def recorded_codec(store: Path) -> tuple[Pipeline, str, str, int | None] | None:
    """The pipeline, model name, preset name and buckets an existing store was written with (what
    ``--add`` and ``--retry-failed`` continue with when no other settings are asked for), or None."""
    existing = store_io.read_meta(store)
    settings = comparable(existing.get(META.settings)) if existing else {}
    name = settings.get("model", {}).get("name")
    try:
        pipeline = writing(Pipeline.from_dict(settings.get("codec") or {}, f"the settings of {store}"))
    except (PipelineError, TypeError):
        return None
    if not isinstance(name, str):
        return None
    raw = existing.get(META.settings) if existing else None
    preset = raw.get(SETTINGS.pipeline) if isinstance(raw, dict) else None
    buckets = settings.get(SETTINGS.buckets)
    preset = preset if isinstance(preset, str) else "custom"
    return pipeline, name, preset, buckets if isinstance(buckets, int) else None


def _given(value: Any) -> Any:
    """Without the keys left at None, so that options added later compare equal when unused."""
    if isinstance(value, dict):
        return {k: _given(v) for k, v in value.items() if v is not None}
    return value


def scale_quality(settings: Any) -> int | None:
    """The quality on the model's own scale that a store's recorded step is, where it is one."""
    try:
        codec, model = settings["codec"], ModelRef.from_dict(settings["model"])
        key = calibration_key(codec["channel"]["transform"], Wavelet.from_dict(codec["wavelet"]))
        step = codec["quantize"]["step"]
    except (KeyError, TypeError, ValueError):
        return None
    return model_quality(model, key, float(step)).get("quality") if step is not None else None


def quality_hint(old: Any, new: Any) -> str:
    """`` (quality 90 -> 20 on the model's scale)`` when both steps are qualities of the model's scale."""
    before, after = scale_quality(old), scale_quality(new)
    if before is None or after is None or before == after:
        return ""
    return f" (quality {before} -> {after} on the model's scale)"


def _padded_latents(settings: Any) -> bool:
    """Whether a store's settings come from before exact latents (stream format 4)."""
    return isinstance(settings, dict) and settings.get(SETTINGS.latents) != EXACT_LATENTS


def differences(old: Any, new: Any, prefix: str = "") -> str:
    """The settings that differ, as dotted paths: ``codec.quantize.quality: 50 -> 30``."""
    if isinstance(old, dict) and isinstance(new, dict):
        parts = [differences(old.get(k), new.get(k), f"{prefix}{k}.") for k in sorted(set(old) | set(new))]
        return "; ".join(p for p in parts if p)
    return f"{prefix[:-1]}: {old!r} -> {new!r}" if old != new else ""
