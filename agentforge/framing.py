"""Messages to and from worker processes: one length-prefixed frame format for every pipe.

The verifier's sandboxed evaluator (:mod:`agentforge.sandbox`) and the campaign's local
executor (:mod:`agentforge.campaign.executor` and its worker, :mod:`agentforge.campaign.job`)
both talk to child processes over stdin/stdout. A frame is an 8-byte big-endian length and
then the payload: a pickle for requests and for trusted workers' answers, JSON for an answer
from a worker that may have run hostile code (the parent never unpickles those, and caps
their size). Both sides of both pipes use the functions here, so the format is written once.
"""

from __future__ import annotations

import json
import pickle
import struct
from typing import Any, BinaryIO

__all__ = ["HEADER", "MAX_REPLY_BYTES", "send", "recv", "send_json", "recv_json", "frame", "write_all",
           "take_frames"]

#: the length prefix of every frame
HEADER = struct.Struct("!Q")
#: the largest JSON answer accepted: a worker's answer is a few KiB; more is a broken or hostile worker
MAX_REPLY_BYTES = 64 << 20


def frame(obj: Any) -> bytes:
    """``obj`` pickled, as one frame (length prefix included)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def send(stream: BinaryIO, obj: Any) -> None:
    """One pickle frame to a buffered stream, flushed."""
    stream.write(frame(obj))
    stream.flush()


def write_all(stream: Any, data: bytes) -> None:
    """``data`` to an unbuffered pipe: raw writes may be partial, so loop until all is written."""
    view = memoryview(data)
    while view:
        n = stream.write(view)
        view = view[n or 0:]


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError("the worker closed its output")
        buf += chunk
    return buf


def recv(stream: BinaryIO) -> Any:
    """The next pickle frame of ``stream``; EOFError when the other side closed it. Trusted peers only."""
    (n,) = HEADER.unpack(_read_exact(stream, HEADER.size))
    return pickle.loads(_read_exact(stream, n))


def take_frames(buf: bytearray) -> list[Any]:
    """Take every complete pickle frame off the front of ``buf`` (bytes read so far from a
    non-blocking pipe); an incomplete last frame stays in ``buf``."""
    out = []
    while len(buf) >= HEADER.size:
        (n,) = HEADER.unpack(bytes(buf[:HEADER.size]))
        if len(buf) < HEADER.size + n:
            break
        out.append(pickle.loads(bytes(buf[HEADER.size:HEADER.size + n])))
        del buf[:HEADER.size + n]
    return out


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):           # numpy / torch scalars
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def send_json(stream: BinaryIO, obj: Any) -> None:
    """One JSON frame (numpy/torch scalars as numbers, sets and tuples as lists, anything else as text)."""
    data = json.dumps(obj, default=_jsonable).encode()
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def recv_json(stream: BinaryIO) -> dict:
    """A worker's answer: JSON, never pickle (the worker may have run hostile code), size-capped."""
    (n,) = HEADER.unpack(_read_exact(stream, HEADER.size))
    if n > MAX_REPLY_BYTES:
        raise EOFError(f"the worker sent a {n}-byte answer (more than {MAX_REPLY_BYTES})")
    d = json.loads(_read_exact(stream, n))
    if not isinstance(d, dict):
        raise EOFError("the worker's answer is not a JSON object")
    return d
