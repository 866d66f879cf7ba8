"""Read a few metadata values from a GGUF file's header without loading the model.

llama.cpp allocates the context when it loads the weights, so the context
size must be chosen before the model's own limit (``<arch>.context_length``)
can be asked of it. The header is a flat list of typed key/value pairs at the
start of the file; the architecture keys come before the large tokenizer
arrays, so reading stops as soon as the wanted keys are found.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

from hanlin import ModelError

MAGIC = b"GGUF"
# GGUF value type id -> struct format of one scalar (8: string and 9: array are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Truncated(Exception):
    pass


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise _Truncated
    return data


def _unpack(fh: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, _read(fh, struct.calcsize(fmt)))[0]


def _string(fh: BinaryIO) -> str:
    return _read(fh, _unpack(fh, "<Q")).decode("utf-8", errors="replace")


def _value(fh: BinaryIO, kind: int, keep: bool) -> Any:
    if kind in _SCALARS:
        return _unpack(fh, _SCALARS[kind])
    if kind == _STRING:
        return _string(fh)
    if kind == _ARRAY:
        item_kind, count = _unpack(fh, "<I"), _unpack(fh, "<Q")
        if not keep and item_kind in _SCALARS:  # skip fixed-size arrays without reading them
            fh.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
            return None
        items = [_value(fh, item_kind, keep) for _ in range(count)]
        return items if keep else None
    raise ValueError(f"unknown GGUF value type {kind}")


def read_metadata(path: Path, wanted: set[str] | None = None) -> dict[str, Any]:
    """The header's key/value pairs (only ``wanted`` ones, stopping once all are found, when given).

    Raises ModelError when the file is not GGUF or its header is cut short.
    """
    found: dict[str, Any] = {}
    with Path(path).open("rb") as fh:
        try:
            magic = _read(fh, 4)
            if magic != MAGIC:
                raise ModelError(f"{str(path)!r} is not a GGUF file (starts with {magic!r}, expected {MAGIC!r})")
            version, _n_tensors, n_kv = _unpack(fh, "<I"), _unpack(fh, "<Q"), _unpack(fh, "<Q")
            if version < 2:
                raise ModelError(f"{str(path)!r} is GGUF version {version}; llama.cpp reads version 2 and later")
            for _ in range(n_kv):
                key = _string(fh)
                keep = wanted is None or key in wanted
                value = _value(fh, _unpack(fh, "<I"), keep)
                if keep:
                    found[key] = value
                    if wanted is not None and wanted <= found.keys():
                        break
        except _Truncated:
            raise ModelError(
                f"the GGUF file {str(path)!r} ends inside its header ({Path(path).stat().st_size} bytes): "
                "it is truncated; reinstall or re-copy it"
            ) from None
        except (ValueError, OverflowError, MemoryError) as exc:
            raise ModelError(f"the GGUF header of {str(path)!r} is corrupt ({exc}); reinstall or re-copy the file") from None
    return found


def context_length(path: Path) -> int | None:
    """The context length the model was trained with, or None when the header does not say."""
    arch = read_metadata(path, {"general.architecture"}).get("general.architecture")
    if not isinstance(arch, str):
        return None
    value = read_metadata(path, {f"{arch}.context_length"}).get(f"{arch}.context_length")
    return int(value) if isinstance(value, int) and value > 0 else None
