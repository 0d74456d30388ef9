"""Wire protocol: every message type and the codec that frames them.

Every message travels as three ZeroMQ frames ``[b"syncsup/1", TYPE, body]``
where ``body`` is a msgpack map. Paths are msgpack ``bin`` (bytes) end to
end because Linux file names need not be UTF-8.
"""

from syncsup.proto._codec import MAX_BODY, MAX_FRAME, VERSION, ProtocolError, decode, encode
from syncsup.proto._messages import (
    Ack,
    Batch,
    Control,
    Done,
    Events,
    Heartbeat,
    Message,
    Ready,
    StatusReply,
    StatusRequest,
    Stop,
)

__all__ = [
    "MAX_BODY",
    "MAX_FRAME",
    "VERSION",
    "Ack",
    "Batch",
    "Control",
    "Done",
    "Events",
    "Heartbeat",
    "Message",
    "ProtocolError",
    "Ready",
    "StatusReply",
    "StatusRequest",
    "Stop",
    "decode",
    "encode",
]
