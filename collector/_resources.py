"""Span resources stored once: a 64-bit id per distinct resource JSON, and the rows to keep.

Every span of a process carries the same resource (service, host, pod, runtime: 0.3–1 KB of
JSON in real deployments). The lander stores each distinct one once in `resources` and the
spans' `resource_id` in `span_rows`; the `spans` view joins them back (schema v3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc


def resource_id(text: str) -> int:
    """The id of a resource: the first 8 bytes of its JSON text's BLAKE2b, as an integer."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def split_resources(
    resource: pa.ChunkedArray | pa.Array, ids: Callable[[str], int] = resource_id
) -> tuple[pa.ChunkedArray, list[int], list[str]]:
    """The id of each row's resource (null where it has none) and the distinct resources.

    Hashing is per distinct value, found by Arrow chunk by chunk (a chunk is a request,
    which usually holds one resource): the column is never copied whole.

    Returns:
        The row ids (uint64), and the distinct resources' ids and texts, in step.
    """
    chunks = resource.chunks if isinstance(resource, pa.ChunkedArray) else [resource]
    known: dict[str, int] = {}
    rows: list[pa.Array] = []
    for chunk in chunks:
        encoded = pc.dictionary_encode(chunk)
        texts: list[str] = encoded.dictionary.to_pylist()
        for text in texts:
            if text not in known:
                known[text] = ids(text)
        rows.append(pa.array([known[t] for t in texts], pa.uint64()).take(encoded.indices))
    return pa.chunked_array(rows, pa.uint64()), list(known.values()), list(known)
