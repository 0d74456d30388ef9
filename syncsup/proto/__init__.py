"""Wire protocol: every message type and the codec that frames them.

Every message travels as three ZeroMQ frames ``[b"syncsup/1", TYPE, body]``
where ``body`` is a msgpack map whose schema is the message class's
annotations. Paths are msgpack ``bin`` (bytes) end to end because Linux
file names need not be UTF-8.
"""

from syncsup.proto._codec import (
    MAX_BODY,
    MAX_FRAME,
    TYPES,
    VERSION,
    ProtocolError,
    decode,
    encode,
    warm_up,
)
from syncsup.proto._messages import (
    Ack,
    Batch,
    Changes,
    Command,
    Control,
    ControlReply,
    Done,
    Events,
    Heartbeat,
    Message,
    Outcome,
    Ready,
    StatusAnswer,
    StatusQuery,
    StatusReply,
    StatusRequest,
    Stop,
)
from syncsup.proto._typed import from_wire, to_wire

__all__ = [
    "MAX_BODY",
    "MAX_FRAME",
    "TYPES",
    "VERSION",
    "Ack",
    "Batch",
    "Changes",
    "Command",
    "Control",
    "ControlReply",
    "Done",
    "Events",
    "Heartbeat",
    "Message",
    "Outcome",
    "ProtocolError",
    "Ready",
    "StatusAnswer",
    "StatusQuery",
    "StatusReply",
    "StatusRequest",
    "Stop",
    "decode",
    "encode",
    "from_wire",
    "to_wire",
    "warm_up",
]
