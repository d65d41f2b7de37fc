"""What a model file is: GGUF metadata and safetensors header summaries.

    inspect_model_file(path) -> {format, architecture, name, parameter_count, quantization,
                                 context_length, tensor_count, file_size, ...}

GGUF is read with the `gguf` package, safetensors with the `safetensors` package; both only
read headers. Used by engine creation (the server) and `modelpull show`.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._paths import is_within


class UnsupportedModel(Exception):
    """The file is not a model an engine can be created from."""


def inspect_model_file(path: Path, within: Sequence[Path] | None = None) -> dict[str, Any]:
    """Format and metadata of a model file (or a folder holding one); UnsupportedModel otherwise.

    `within`: the folders a model may be read from (the server's roots). A folder's files are
    then taken only if they resolve inside one of them: a link in an allowed folder to a file
    elsewhere is treated as absent, as the file itself would be.
    """
    if path.is_dir():
        def readable(found: list[Path]) -> list[Path]:
            return [p for p in sorted(found) if within is None or any(is_within(p, root) for root in within)]

        candidates = readable(list(path.rglob("*.gguf"))) or readable(list(path.rglob("*.safetensors")))
        if not candidates:
            raise UnsupportedModel(f"'{path}' holds no .gguf or .safetensors file")
        if candidates[0].suffix == ".safetensors":
            infos = [_inspect_safetensors(p) for p in candidates]
            merged = dict(infos[0])
            merged["parameter_count"] = sum(i["parameter_count"] or 0 for i in infos)
            merged["file_size"] = sum(i["file_size"] for i in infos)
            merged["files"] = len(infos)
            return merged
        path = candidates[0]
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise UnsupportedModel(f"Cannot read '{path}': {exc.strerror or exc}") from None
    if head[:4] == b"GGUF":
        return _inspect_gguf(path)
    if len(head) == 8 and path.stat().st_size > 8:
        header_len = struct.unpack("<Q", head)[0]
        if 2 <= header_len <= 100 * 1024 * 1024 and header_len + 8 <= path.stat().st_size:
            try:
                return _inspect_safetensors(path)
            except UnsupportedModel:
                pass
    # Never echo the file's bytes: the answer would read files for whoever asks.
    raise UnsupportedModel(
        f"'{path.name}' is neither a GGUF nor a safetensors model file; an engine needs a .gguf file, "
        "or .safetensors weights"
    )


def _inspect_gguf(path: Path) -> dict[str, Any]:
    import gguf  # imported here: it pulls numpy, which the rest of the server does not need

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # the gguf package raises ValueError, struct.error, IndexError...
        raise UnsupportedModel(f"'{path.name}' has a GGUF signature but cannot be read: {exc}") from None

    def field(name: str) -> Any:
        entry = reader.get_field(name)
        if entry is None:
            return None
        try:
            return entry.contents()
        except Exception:
            return None

    architecture = field("general.architecture")
    parameter_count = field("general.parameter_count")
    if not isinstance(parameter_count, int):
        parameter_count = 0
        for tensor in reader.tensors:
            count = 1
            for dim in tensor.shape:
                count *= int(dim)
            parameter_count += count
    quantization = None
    file_type = field("general.file_type")
    if isinstance(file_type, int):
        try:
            quantization = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            quantization = None
    if quantization is None and reader.tensors:
        counts: dict[str, int] = {}
        for tensor in reader.tensors:
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + int(tensor.n_elements)
        quantization = max(counts, key=counts.__getitem__)
    context_length = field(f"{architecture}.context_length") if architecture else None
    return {
        "format": "gguf",
        "architecture": architecture,
        "name": field("general.name"),
        "parameter_count": parameter_count,
        "quantization": quantization,
        "context_length": context_length if isinstance(context_length, int) else None,
        "tensor_count": len(reader.tensors),
        "file_size": path.stat().st_size,
    }


def _inspect_safetensors(path: Path) -> dict[str, Any]:
    """The header summary, read by the `safetensors` package (lazily: no tensor is loaded)."""
    from safetensors import safe_open  # its numpy face: the rest of modelpull never needs it

    size = path.stat().st_size
    parameter_count = 0
    dtypes: dict[str, int] = {}
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            names = list(handle.keys())
            for name in names:
                tensor = handle.get_slice(name)
                count = 1
                for dim in tensor.get_shape():
                    count *= int(dim)
                parameter_count += count
                dtype = str(tensor.get_dtype())
                dtypes[dtype] = dtypes.get(dtype, 0) + count
    except Exception as exc:  # safetensors raises its own SafetensorError, and OSError
        raise UnsupportedModel(f"'{path.name}' is not a readable safetensors file: {exc}") from None
    return {
        "format": "safetensors",
        "architecture": None,
        "name": None,
        "parameter_count": parameter_count,
        "quantization": None,
        "dtype": max(dtypes, key=dtypes.__getitem__) if dtypes else None,
        "dtypes": dtypes,
        "context_length": None,
        "tensor_count": len(names),
        "file_size": size,
        "metadata": {str(k): str(v) for k, v in list(metadata.items())[:20]},
    }
