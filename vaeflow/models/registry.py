"""The model registry: named VAEs with their files, scaling and measured figures.

Entries come from three TOML files, later ones overriding earlier ones by name:
1. ``models.toml`` shipped with vaeflow (the default model);
2. ``$VAEFLOW_HOME/models.toml`` (default ``~/.vaeflow``), where imports are registered;
3. the file named by ``$VAEFLOW_CONFIG``, if set.

File paths in an entry are relative to the TOML file that holds it. ``[aliases]`` maps
names such as ``default`` to entries.

An entry may record the latent convention of the model's own ecosystem (what a diffusion
model trains on): ``convention = "shift_scale"`` with ``convention_patch``,
``convention_shift`` and ``convention_scale`` (see ``vaeflow.models.convention``);
``"none"`` (the default): the model's latent is vaeflow's normalised one.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tomllib
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from vaeflow.foundations.durable import atomic_write
from vaeflow.foundations.errors import ModelError
from vaeflow.foundations.resources import shipped_models_dir
from vaeflow.models.convention import CONVENTIONS, LatentConvention

REGISTRY_FILE = "models.toml"
FINGERPRINT_BYTES = 8
MAX_PATCH = 16  # the largest latent patch a stream's latent unit can say


def home_dir() -> Path:
    return Path(os.environ.get("VAEFLOW_HOME", Path.home() / ".vaeflow")).expanduser()


def padded_shape(height: int, width: int, unit: int) -> tuple[int, int]:
    """The shape an image of ``height x width`` is encoded at: each side edge-padded up to a multiple
    of ``unit`` (the model's downsampling times its latent patch), as ``vaeflow.encode_latent`` pads it."""
    return -(-height // unit) * unit, -(-width // unit) * unit


@dataclass(frozen=True)
class ModelRef:
    """A model as resolved once: what a codec carries, a plan records and a stream names.

    Workers and decoders load the model by this reference; a registry that resolves the name
    to other files (another fingerprint) is refused, naming both. ``convention`` is how the
    model's own latents relate to the normalised ones (None: they are the same), as the
    registry said when the model was resolved: a store records it in its settings, so that
    its latents read back in the model's convention without the registry. It is not part of
    the model's identity, and a stream header does not carry it (a reference rebuilt from a
    header has None).
    """

    name: str
    fingerprint: str  # hex: the first bytes of the SHA-256 of the decoder file
    latent_channels: int
    downsample: int
    convention: LatentConvention | None = field(default=None, compare=False)

    @property
    def fingerprint_bytes(self) -> bytes:
        return bytes.fromhex(self.fingerprint)

    def latent_shape(self, height: int, width: int, unit: int = 1) -> tuple[int, int, int]:
        """The latent of an image of this size, padded to a multiple of ``unit`` latent samples."""
        s = self.downsample
        padded_height, padded_width = padded_shape(height, width, s * unit)
        return (self.latent_channels, padded_height // s, padded_width // s)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "latent_channels": self.latent_channels,
            "downsample": self.downsample,
        }
        if self.convention is not None:  # models without one are recorded as before
            out["convention"] = self.convention.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRef:
        convention = data.get("convention")
        return cls(
            str(data["name"]),
            str(data["fingerprint"]),
            int(data["latent_channels"]),
            int(data["downsample"]),
            LatentConvention.from_dict(convention) if convention is not None else None,
        )

    def describe(self) -> str:
        shape = f"{self.latent_channels} channels, downsample {self.downsample}"
        return f"{self.name!r} (fingerprint {self.fingerprint}, {shape})"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    encoder: Path
    decoder: Path
    latent_channels: int
    downsample: int
    input_range: tuple[float, float] = (0.0, 1.0)
    latent_scale: tuple[float, ...] = (1.0,)
    latent_shift: tuple[float, ...] = (0.0,)
    license: str = "unknown"
    description: str = ""
    recon_psnr: float | None = None
    recon_ms_ssim: float | None = None
    convention: str = "none"
    convention_patch: int = 1
    convention_shift: tuple[float, ...] = (0.0,)
    convention_scale: tuple[float, ...] = (1.0,)
    calibration: dict[str, tuple[tuple[float, ...], ...]] = field(default_factory=dict, compare=False, hash=False)
    # by calibration key: the base step and the PSNR measured at qualities 1, 10, 20, ..., 100
    quality_scale: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(
        default_factory=dict, compare=False, hash=False
    )
    # by calibration key: the fitted correction that predicts an image's PSNR drop (vaeflow.codec.dropmodel)
    drop_model: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, hash=False)
    source: Path | None = field(default=None, compare=False)

    @classmethod
    def from_toml(cls, name: str, table: dict[str, Any], base: Path) -> ModelEntry:
        required = ("encoder", "decoder", "latent_channels", "downsample")
        missing = [k for k in required if k not in table]
        if missing:
            raise ModelError(f"model {name!r} in {base / REGISTRY_FILE} lacks {', '.join(missing)}")

        def floats(key: str, default: tuple[float, ...]) -> tuple[float, ...]:
            value = table.get(key, default)
            return tuple(float(v) for v in (value if isinstance(value, list | tuple) else [value]))

        calibration = table.get("calibration", {})
        entry = cls(
            name=name,
            encoder=(base / table["encoder"]).resolve(),
            decoder=(base / table["decoder"]).resolve(),
            latent_channels=int(table["latent_channels"]),
            downsample=int(table["downsample"]),
            input_range=floats("input_range", (0.0, 1.0)),  # type: ignore[arg-type]
            latent_scale=floats("latent_scale", (1.0,)),
            latent_shift=floats("latent_shift", (0.0,)),
            license=str(table.get("license", "unknown")),
            description=str(table.get("description", "")),
            recon_psnr=table.get("recon_psnr"),
            recon_ms_ssim=table.get("recon_ms_ssim"),
            convention=str(table.get("convention", "none")),
            convention_patch=int(table.get("convention_patch", 1)),
            convention_shift=floats("convention_shift", (0.0,)),
            convention_scale=floats("convention_scale", (1.0,)),
            calibration={k: tuple(tuple(float(v) for v in row) for row in rows) for k, rows in calibration.items()},
            quality_scale={
                k: (tuple(float(v) for v in scale["step"]), tuple(float(v) for v in scale["psnr"]))
                for k, scale in table.get("quality_scale", {}).items()
            },
            drop_model={str(k): dict(v) for k, v in table.get("drop_model", {}).items()},
            source=base,
        )
        entry.validate()
        return entry

    def validate(self) -> None:
        where = f"model {self.name!r}"
        if self.latent_channels < 1 or self.downsample < 1:
            raise ModelError(f"{where}: latent_channels and downsample must be positive")
        if len(self.input_range) != 2 or self.input_range[0] >= self.input_range[1]:
            raise ModelError(f"{where}: input_range must be [low, high], got {list(self.input_range)}")
        for key in ("latent_scale", "latent_shift"):
            value = getattr(self, key)
            if len(value) not in (1, self.latent_channels):
                raise ModelError(f"{where}: {key} needs 1 or {self.latent_channels} values, got {len(value)}")
        if any(v == 0 for v in self.latent_scale):
            raise ModelError(f"{where}: latent_scale must not be zero")
        if self.convention not in CONVENTIONS:
            raise ModelError(f"{where}: unknown convention {self.convention!r}; known: {', '.join(CONVENTIONS)}")
        if not 1 <= self.convention_patch <= MAX_PATCH:
            raise ModelError(f"{where}: convention_patch must be 1..{MAX_PATCH}, got {self.convention_patch}")
        patched = self.latent_channels * self.convention_patch**2
        for key in ("convention_shift", "convention_scale"):
            if len(getattr(self, key)) not in (1, patched):
                raise ModelError(f"{where}: {key} needs 1 or {patched} values, got {len(getattr(self, key))}")
        if any(v == 0 for v in self.convention_scale):
            raise ModelError(f"{where}: convention_scale must not be zero")
        for key, (steps, psnr) in self.quality_scale.items():
            if len(steps) != 11 or len(psnr) != 11 or not all(a > b > 0 for a, b in itertools.pairwise(steps)):
                raise ModelError(
                    f"{where}: quality_scale {key!r} needs 11 decreasing positive steps and 11 PSNRs (qualities "
                    f"1, 10, ..., 100); run `vaeflow models calibrate {self.name} --data PHOTOS` again"
                )

    def fingerprint(self) -> bytes:
        """First bytes of the SHA-256 of the decoder file: what a stream needs to decode."""
        return file_fingerprint(self.decoder)

    def latent_convention(self) -> LatentConvention | None:
        """The map from the normalised latent to the model's own; None for models without a convention."""
        if self.convention == "none":
            return None
        return LatentConvention(
            self.latent_channels, self.convention_patch, self.convention_shift, self.convention_scale,
            self.latent_shift, self.latent_scale,
        )  # fmt: skip

    def ref(self) -> ModelRef:
        return ModelRef(
            self.name, self.fingerprint().hex(), self.latent_channels, self.downsample, self.latent_convention()
        )

    def to_toml_table(self, base: Path) -> dict[str, Any]:
        table = {k: v for k, v in asdict(self).items() if v is not None and k not in ("name", "source")}
        for key in ("encoder", "decoder"):
            path = Path(table[key])
            table[key] = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
        for key in ("input_range", "latent_scale", "latent_shift", "convention_shift", "convention_scale"):
            table[key] = list(table[key])
        if self.convention == "none":  # entries without a convention of their own stay as they were
            for key in ("convention", "convention_patch", "convention_shift", "convention_scale"):
                del table[key]
        table["calibration"] = {k: [list(row) for row in rows] for k, rows in self.calibration.items()}
        if not table["calibration"]:
            del table["calibration"]
        table["quality_scale"] = {k: {"step": list(st), "psnr": list(ps)} for k, (st, ps) in self.quality_scale.items()}
        if not table["quality_scale"]:
            del table["quality_scale"]
        table["drop_model"] = {k: dict(v) for k, v in self.drop_model.items()}
        if not table["drop_model"]:
            del table["drop_model"]
        return table


def file_fingerprint(path: Path) -> bytes:
    """The file's fingerprint, hashed once per process for each version (size, mtime) of the file."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    return _hashed(Path(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _hashed(path: Path, size: int, mtime_ns: int) -> bytes:
    try:
        digest = hashlib.sha256(path.read_bytes()).digest()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    return digest[:FINGERPRINT_BYTES]


@dataclass(frozen=True)
class Registry:
    entries: dict[str, ModelEntry]
    aliases: dict[str, str]

    @classmethod
    def load(cls) -> Registry:
        """The registry as its files say now; parsed once per version of those files."""
        files = registry_files()
        return _parsed(tuple((f, *_stamp(f)) for f in files))

    def names(self) -> list[str]:
        return sorted({*self.entries, *self.aliases})

    def resolve(self, name: str) -> ModelEntry:
        target = self.aliases.get(name, name)
        if target not in self.entries:
            raise ModelError(f"unknown model {name!r}; known models: {', '.join(self.names()) or 'none'}")
        return self.entries[target]


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _parsed(files: tuple[tuple[Path, int, int], ...]) -> Registry:
    entries: dict[str, ModelEntry] = {}
    aliases: dict[str, str] = {}
    for path, _, _ in files:
        data = read_registry_file(path)
        for name, table in data.get("models", {}).items():
            entries[name] = ModelEntry.from_toml(name, table, path.parent)
        aliases.update({str(k): str(v) for k, v in data.get("aliases", {}).items()})
    return Registry(entries, aliases)


def registry_files() -> list[Path]:
    files = [shipped_models_dir() / REGISTRY_FILE, home_dir() / REGISTRY_FILE]
    if os.environ.get("VAEFLOW_CONFIG"):
        config = Path(os.environ["VAEFLOW_CONFIG"]).expanduser()
        if not config.is_file():
            raise ModelError(f"VAEFLOW_CONFIG names {config}, which is not a file")
        files.append(config)
    return [f for f in files if f.is_file()]


def read_registry_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelError(f"cannot read model registry {path}: {exc}") from exc


def register(entry: ModelEntry, path: Path | None = None, aliases: tuple[str, ...] = ()) -> Path:
    """Add or replace ``entry`` (and aliases to it) in a registry file, the user's by default."""
    path = path or home_dir() / REGISTRY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_registry_file(path) if path.is_file() else {}
    data.setdefault("aliases", {}).update({alias: entry.name for alias in aliases})
    models = data.setdefault("models", {})
    models[entry.name] = replace(entry, source=path.parent).to_toml_table(path.parent)
    atomic_write(path, dump_toml(data))
    return path


def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for registry files: tables of scalars, lists and inline tables."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []
    for section in ("aliases",):
        if data.get(section):
            lines.append(f"[{section}]")
            lines += [f'"{k}" = {value(v)}' for k, v in data[section].items()]
            lines.append("")
    for name, table in data.get("models", {}).items():
        lines.append(f'[models."{name}"]')
        lines += [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        lines.append("")
        for key, sub in table.items():
            if isinstance(sub, dict) and sub:
                lines.append(f'[models."{name}".{key}]')
                lines += [f'"{k}" = {value(v)}' for k, v in sub.items()]
                lines.append("")
    return "\n".join(lines)
