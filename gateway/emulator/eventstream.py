"""An encoder for the AWS event-stream binary framing (``application/vnd.amazon.eventstream``).

Written from the format's description, not from botocore's decoder, which the tests use to read
what this writes. One message on the wire, all integers big-endian:

| bytes | field                                                                      |
|-------|----------------------------------------------------------------------------|
| 4     | total length: the whole message, these 4 bytes and the final CRC included  |
| 4     | headers length                                                             |
| 4     | prelude CRC: CRC-32 of the 8 bytes above                                   |
| n     | headers, each: name length (1), name (UTF-8), value type (1), value        |
| m     | payload                                                                    |
| 4     | message CRC: CRC-32 of everything before it, prelude CRC included          |

Only the string value type (7: a 2-byte length, then UTF-8) is written: it is the only one the
SageMaker runtime's messages carry. The messages it sends (botocore's ``ResponseStream`` shape):

- an event: ``:message-type`` ``event``, ``:event-type`` ``PayloadPart``, ``:content-type``
  ``application/octet-stream`` (the event's payload member, ``Bytes``, is a blob), the part's bytes
  as the payload;
- an exception, which ends the stream: ``:message-type`` ``exception``, ``:exception-type``
  ``ModelStreamError`` or ``InternalStreamFailure``, ``:content-type`` ``application/json``, the
  error's members (``Message``, and ``ErrorCode`` for ModelStreamError) as a JSON payload.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

EVENT_STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
PAYLOAD_PART = "PayloadPart"
MODEL_STREAM_ERROR = "ModelStreamError"
INTERNAL_STREAM_FAILURE = "InternalStreamFailure"

_STRING_TYPE = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")
# The format's own limits: botocore refuses a message beyond them.
MAX_HEADERS_BYTES = 128 * 1024
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
_MAX_NAME_BYTES = 255
_MAX_STRING_BYTES = 32767

Headers = Sequence[tuple[str, str]]


def encode_message(headers: Headers, payload: bytes) -> bytes:
    """One event-stream message with these string headers (in this order) and this payload."""
    encoded_headers = b"".join(_encode_header(name, value) for name, value in headers)
    if len(encoded_headers) > MAX_HEADERS_BYTES:
        raise ValueError(f"headers take {len(encoded_headers)} bytes; at most {MAX_HEADERS_BYTES}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload has {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}")
    total_length = _PRELUDE.size + _CRC.size + len(encoded_headers) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total_length, len(encoded_headers))
    prelude += _CRC.pack(zlib.crc32(prelude))
    message = prelude + encoded_headers + payload
    return message + _CRC.pack(zlib.crc32(message))


def _encode_header(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode(), value.encode()
    if not 0 < len(name_bytes) <= _MAX_NAME_BYTES:
        raise ValueError(f"header name {name!r}: 1 to {_MAX_NAME_BYTES} bytes")
    if len(value_bytes) > _MAX_STRING_BYTES:
        raise ValueError(f"header {name!r}: a string value has at most {_MAX_STRING_BYTES} bytes")
    return (
        struct.pack(">B", len(name_bytes))
        + name_bytes
        + struct.pack(">BH", _STRING_TYPE, len(value_bytes))
        + value_bytes
    )


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event carrying ``data``."""
    headers = (
        (":event-type", PAYLOAD_PART),
        (":content-type", "application/octet-stream"),
        (":message-type", "event"),
    )
    return encode_message(headers, data)


def exception_message(exception_type: str, members: Mapping[str, Any]) -> bytes:
    """An exception message of ``exception_type``, its members as the JSON payload."""
    headers = (
        (":exception-type", exception_type),
        (":content-type", "application/json"),
        (":message-type", "exception"),
    )
    return encode_message(headers, json.dumps(dict(members)).encode())
