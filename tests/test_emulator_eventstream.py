"""The emulator's event-stream encoder, read back by botocore's own decoder.

botocore's ``EventStreamBuffer`` checks both CRCs and every length; it shares no code with the
encoder, so a message it decodes to the right headers and payload is framed as AWS frames it.
"""

from __future__ import annotations

import json

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from gateway.emulator import eventstream
from tests.emulator_client import decode_messages as decode


def test_a_payload_part_decodes_to_its_bytes_and_the_services_headers():
    """A PayloadPart is an event of type PayloadPart whose octet-stream payload is the part."""
    [message] = decode(eventstream.payload_part(b'{"token": 1}'))
    assert message.headers == {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }
    assert message.payload == b'{"token": 1}'


def test_an_exception_decodes_to_its_type_and_json_members():
    """An exception message names its type and carries its members as a JSON payload."""
    members = {"Message": "broken", "ErrorCode": "StreamBroken"}
    [message] = decode(eventstream.exception_message("ModelStreamError", members))
    assert message.headers == {
        ":exception-type": "ModelStreamError",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    assert json.loads(message.payload) == members


def test_messages_fed_a_byte_at_a_time_come_out_whole_and_in_order():
    """Split anywhere, consecutive messages decode one by one, in order, once complete."""
    parts = [b"", b"a", bytes(range(256)) * 4, "é".encode()]
    wire = b"".join(eventstream.payload_part(part) for part in parts)
    buffer = EventStreamBuffer()
    decoded = []
    for index in range(len(wire)):
        buffer.add_data(wire[index : index + 1])
        decoded.extend(message.payload for message in buffer)
    assert decoded == parts


def test_the_prelude_carries_the_total_and_header_lengths():
    """The first eight bytes are the message's total length and its headers' length."""
    wire = eventstream.payload_part(b"12345")
    [message] = decode(wire)
    assert message.prelude.total_length == len(wire)
    assert message.prelude.headers_length == len(wire) - 12 - 5 - 4


@pytest.mark.parametrize("position", [0, 5, 9, 20, -6, -1])
def test_a_flipped_bit_anywhere_fails_a_crc(position):
    """Both CRCs are real: corrupting the prelude or the message is caught by the decoder."""
    wire = bytearray(eventstream.payload_part(b"payload"))
    wire[position] ^= 0x01
    with pytest.raises(ChecksumMismatch):
        decode(bytes(wire))


def test_header_values_are_measured_in_utf8_bytes():
    """A non-ASCII header value round-trips: its length is counted in bytes, not characters."""
    [message] = decode(eventstream.encode_message([(":event-type", "Pärt✓")], b""))
    assert message.headers == {":event-type": "Pärt✓"}


@pytest.mark.parametrize(
    ("headers", "payload"),
    [
        ([("", "value")], b""),
        ([("n" * 256, "value")], b""),
        ([("name", "v" * 32768)], b""),
        ([], b"x" * (eventstream.MAX_PAYLOAD_BYTES + 1)),
    ],
    ids=["empty-name", "long-name", "long-value", "large-payload"],
)
def test_what_the_format_cannot_carry_is_refused(headers, payload):
    """A name outside 1-255 bytes, a value over 32767 bytes, a payload over 16 MiB: ValueError."""
    with pytest.raises(ValueError):
        eventstream.encode_message(headers, payload)
