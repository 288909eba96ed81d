"""Stateful sessions: NEW_SESSION opens one, its id routes later calls, a close request ends it.

| request                                          | InvokeEndpoint's answer                      |
|--------------------------------------------------|----------------------------------------------|
| ``X-Amzn-SageMaker-Session-Id: NEW_SESSION``     | ``X-Amzn-SageMaker-New-Session-Id: <id>;``   |
|                                                  | ``Expires=<UTC, 20 minutes ahead>``          |
| an id issued here, not expired, not closed       | no session header (the call joins it)        |
| such an id and the body ``{"close_session":``    | ``X-Amzn-SageMaker-Closed-Session-Id: <id>``;|
| ``true}``                                        | the id is forgotten                          |
| any other id (never issued, expired or closed)   | 400 ``ValidationError``                      |

In the service the model container decides when a session closes and says so with the
Closed-Session-Id header; the close request's shape is the model's own convention. This
emulator's convention is a JSON body that is exactly ``{"close_session": true}``.

InvokeEndpointWithResponseStream joins existing sessions only: its SessionId pattern in the
service model excludes ``NEW_SESSION`` ("You can't create a stateful session by using the
InvokeEndpointWithResponseStream action"), so NEW_SESSION there is the pattern's ValidationError,
and its output has neither session header, so a close request there is an ordinary call.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, timedelta

from gateway.emulator.errors import invalid_value, validation_error
from gateway.emulator.invocation import (
    INVOKE_ENDPOINT,
    INVOKE_ENDPOINT_WITH_RESPONSE_STREAM,
    SESSION_ID,
    Invocation,
)

NEW_SESSION = "NEW_SESSION"
NEW_SESSION_ID = "X-Amzn-SageMaker-New-Session-Id"
CLOSED_SESSION_ID = "X-Amzn-SageMaker-Closed-Session-Id"
SESSION_LIFETIME = timedelta(minutes=20)
#: The SessionId pattern of InvokeEndpointWithResponseStream in the service model.
STREAM_SESSION_ID_PATTERN = "^[a-zA-Z0-9](-*[a-zA-Z0-9])*$"
CLOSE_KEY = "close_session"


def session_headers(call: Invocation) -> dict[str, str]:
    """The session headers of the answer; a ValidationError for an id that is not a session."""
    requested = call.header(SESSION_ID)
    if requested is None:
        return {}
    _forget_expired(call)
    if requested == NEW_SESSION:
        if call.operation == INVOKE_ENDPOINT_WITH_RESPONSE_STREAM:
            raise invalid_value(
                "sessionId",
                requested,
                f"Member must satisfy regular expression pattern: {STREAM_SESSION_ID_PATTERN}",
            )
        return _open(call)
    if requested not in call.state.sessions:
        raise validation_error(f"Session {requested} was not found or has expired.")
    if call.operation == INVOKE_ENDPOINT and is_close_request(call.body):
        del call.state.sessions[requested]
        return {CLOSED_SESSION_ID: requested}
    return {}


def is_close_request(body: bytes) -> bool:
    """Whether ``body`` is this emulator's close request, ``{"close_session": true}``."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    # ``is True``: a 1 would compare equal to True, and is not the convention.
    return isinstance(parsed, dict) and parsed.keys() == {CLOSE_KEY} and parsed[CLOSE_KEY] is True


def _forget_expired(call: Invocation) -> None:
    sessions = call.state.sessions
    for expired in [key for key, expires in sessions.items() if expires <= call.received_at]:
        del sessions[expired]


def _open(call: Invocation) -> dict[str, str]:
    session_id = str(uuid.uuid4())
    expires = call.received_at + SESSION_LIFETIME
    call.state.sessions[session_id] = expires
    return {NEW_SESSION_ID: f"{session_id}; Expires={expires.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"}
