"""The frame format every worker pipe uses (agentforge.framing): the sandboxed evaluator's and the
campaign executor's."""

import io
import os
import pickle

import pytest

from agentforge.framing import HEADER, MAX_REPLY_BYTES, frame, recv, recv_json, send, send_json, take_frames


def test_a_worker_answer_is_json_never_unpickled(tmp_path):
    """The parent reads a worker's answer as size-capped JSON: a worker that ran hostile code
    cannot make it unpickle (run) anything. A frame larger than the cap is a crash result."""
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    data = pickle.dumps(Boom())
    with pytest.raises(ValueError):
        recv_json(io.BytesIO(HEADER.pack(len(data)) + data))
    assert not (tmp_path / "ran").exists()
    with pytest.raises(EOFError, match="more than"):
        recv_json(io.BytesIO(HEADER.pack(MAX_REPLY_BYTES + 1)))


def test_one_frame_format_for_buffered_streams_and_non_blocking_reads():
    """What send writes, recv reads back and take_frames (the executor reading a non-blocking
    pipe piece by piece) splits into the same messages, keeping an incomplete frame for later."""
    stream = io.BytesIO()
    messages = [{"kind": "event", "data": {"n": 1}}, None, {"kind": "result", "data": list(range(5))}]
    for m in messages:
        send(stream, m)
    data = stream.getvalue()
    assert data == b"".join(frame(m) for m in messages)
    stream.seek(0)
    assert [recv(stream) for _ in messages] == messages
    with pytest.raises(EOFError):
        recv(stream)
    buf = bytearray(data[:-3])
    assert take_frames(buf) == messages[:2]
    buf += data[-3:]
    assert take_frames(buf) == messages[2:] and not buf


def test_json_frames_carry_numpy_scalars_and_tuples_as_plain_values():
    np = pytest.importorskip("numpy")
    stream = io.BytesIO()
    send_json(stream, {"seconds": np.float32(0.5), "shape": (2, 3), "set": {1}})
    stream.seek(0)
    assert recv_json(stream) == {"seconds": 0.5, "shape": [2, 3], "set": [1]}
