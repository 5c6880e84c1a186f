"""Readers for the file formats MNIST-like datasets come in: idx (optionally gzipped) and amat."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IDX_UBYTE = 0x08


class DataFileError(ValueError):
    """A data file is missing or malformed; the message names the file and what is wrong."""


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file of unsigned bytes (the MNIST format), ``.gz`` or not, as a uint8 array.

    The header is two zero bytes, a type code (0x08 for unsigned bytes), the number of
    dimensions, then one big-endian uint32 per dimension; the data follows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DataFileError(f"{path}: cannot be read ({error}); delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFileError(f"{path}: not an idx file (bad magic number); expected MNIST's idx format")
    if raw[2] != IDX_UBYTE:
        raise DataFileError(f"{path}: idx type code 0x{raw[2]:02x}; only unsigned bytes (0x08) are supported")
    num_dims = raw[3]
    header_size = 4 + 4 * num_dims
    if num_dims == 0 or len(raw) < header_size:
        raise DataFileError(f"{path}: truncated idx header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    expected = int(np.prod(shape))
    if len(raw) - header_size != expected:
        raise DataFileError(
            f"{path}: header promises shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header_size} bytes; the file is truncated or corrupt, fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def read_amat(path: Path, num_pixels: int = 784) -> np.ndarray:
    """Read a Larochelle & Murray binarized-MNIST ``.amat`` file: one image per line, 0/1 values.

    Returns a float32 array of shape (lines, num_pixels).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    rows = []
    with open(path, "r") as handle:
        for line_number, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != num_pixels:
                raise DataFileError(
                    f"{path}, line {line_number}: {len(tokens)} values, expected {num_pixels} (one 28x28 image per line)"
                )
            rows.append(_parse_amat_line(tokens, path, line_number))
    if not rows:
        raise DataFileError(f"{path}: no images in the file")
    return np.stack(rows)


def _parse_amat_line(tokens: list[str], path: Path, line_number: int) -> np.ndarray:
    joined = "".join(tokens)
    if len(joined) == len(tokens) and joined.isascii():  # the usual case: single-character 0/1 tokens
        values = (np.frombuffer(joined.encode("ascii"), dtype=np.uint8) - ord("0")).astype(np.float32)
    else:
        try:
            values = np.asarray(tokens, dtype=np.float32)
        except ValueError:
            raise DataFileError(f"{path}, line {line_number}: non-numeric values; expected 0/1 pixels") from None
    if ((values != 0) & (values != 1)).any():
        raise DataFileError(
            f"{path}, line {line_number}: values other than 0 and 1; amat files hold binarized MNIST"
        )
    return values
