"""Bounds-checked byte reading and writing: varints, fixed-width integers, raw bytes."""

from __future__ import annotations

import struct

from vaeflow.foundations.errors import CorruptStreamError


class ByteWriter:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> None:
        self._parts.append(struct.pack("<B", value))

    def u32(self, value: int) -> None:
        self._parts.append(struct.pack("<I", value))

    def f32(self, value: float) -> None:
        self._parts.append(struct.pack("<f", value))

    def varint(self, value: int) -> None:
        """Unsigned LEB128."""
        if value < 0:
            raise ValueError(f"varint needs a non-negative value, got {value}")
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
        self._parts.append(bytes(out))

    def svarint(self, value: int) -> None:
        """Zigzag-mapped signed LEB128."""
        self.varint(2 * value if value >= 0 else -2 * value - 1)

    def raw(self, data: bytes) -> None:
        self._parts.append(bytes(data))

    def text(self, value: str) -> None:
        data = value.encode("utf-8")
        self.varint(len(data))
        self.raw(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class ByteReader:
    """Reads from untrusted bytes; every overrun or bad value raises CorruptStreamError."""

    def __init__(self, data: bytes | memoryview, what: str = "stream") -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._what = what

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.remaining:
            raise CorruptStreamError(
                f"{self._what} is truncated: needs {n} bytes at offset {self._pos}, has {self.remaining}"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def f32(self) -> float:
        return float(struct.unpack("<f", self.take(4))[0])

    def varint(self, limit: int = 2**63) -> int:
        value, shift = 0, 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise CorruptStreamError(f"{self._what} has an over-long varint at offset {self._pos}")
        if value > limit:
            raise CorruptStreamError(f"{self._what} holds {value} at offset {self._pos}, over the limit {limit}")
        return value

    def svarint(self, limit: int = 2**62) -> int:
        z = self.varint(2 * limit + 1)
        return z >> 1 if not z & 1 else -((z + 1) >> 1)

    def text(self, max_len: int = 255) -> str:
        data = self.take(self.varint(max_len))
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptStreamError(f"{self._what} holds a name that is not UTF-8") from exc

    def expect_end(self) -> None:
        if self.remaining:
            raise CorruptStreamError(f"{self._what} has {self.remaining} unexpected trailing bytes")
