"""The ``explainer`` endpoint: a model behind a SageMaker Clarify online explainer.

The model is a linear regressor: a record's score is the sum of its features. Records, one a line:

- ``text/csv``: comma-separated numbers, e.g. ``1,2,3,4``;
- ``application/jsonlines``: a JSON array of numbers, e.g. ``[1, 2, 3, 4]``.

ContentType must be one of these two (Clarify's supported formats); so must Accept, which may
also be absent or ``*/*`` (then the content type's). Anything else, or a record that is not
numbers, is a 400 ``ValidationError`` (the emulator's wording).

The answer is Clarify's response schema, ``Content-Type: application/json``::

    {"version": "1.0",
     "predictions": {"content_type": "<Accept>", "data": "<the model's output>"},
     "label_headers": ["score"],
     "explanations": {"kernel_shap": [<per record: null, or per feature
         {"feature_header": "feature_<j>", "attributions": [{"attribution": [<value>]}]}>]}}

The model's output (``data``) is ``<score>\\n`` a record in CSV, ``{"score": <score>}\\n`` in JSON
Lines. The attributions are the exact Kernel SHAP values of this linear model against an all-zero
baseline: feature j's attribution is the feature's value, so a record's attributions add up to
its score.

``X-Amzn-SageMaker-Enable-Explanations`` is a JMESPath expression evaluated for each record on the
model's output for it (CSV: a JSON array, ``[score]``; JSON Lines: ``{"score": score}``); the record
is explained when it is true, else its explanation is ``null``. Absent, it is ``"`true`"``
(the explainer configuration's default). When no record is explained, ``explanations`` is ``{}``.
An expression that does not parse, or that gives anything but a Boolean, is a 400
``ValidationError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import jmespath
import jmespath.exceptions
from aiohttp import web

from gateway.emulator.answers import ModelOutput, deliver
from gateway.emulator.errors import validation_error
from gateway.emulator.invocation import ENABLE_EXPLANATIONS, Invocation

CSV = "text/csv"
JSON_LINES = "application/jsonlines"
SCHEMA_VERSION = "1.0"
LABEL = "score"
EXPLAIN_ALL = "`true`"

Record = list[float]


async def explainer(call: Invocation) -> web.StreamResponse:
    """Answer with the predictions and their Kernel SHAP explanations, in Clarify's schema."""
    content_type = _supported("ContentType", call.header("Content-Type"))
    accept = call.header("Accept")
    if accept is None or accept.strip() == "*/*":
        accept = content_type
    output_type = _supported("Accept", accept)
    records = parse_records(call.body, content_type)
    outputs = [_model_output(sum(record), output_type) for record in records]
    expression = _compile(call.header(ENABLE_EXPLANATIONS) or EXPLAIN_ALL)
    explanations = [
        kernel_shap(record) if _explains(expression, output) else None
        for record, output in zip(records, outputs, strict=True)
    ]
    answer = {
        "version": SCHEMA_VERSION,
        "predictions": {"content_type": accept, "data": "".join(_line(o) for o in outputs)},
        "label_headers": [LABEL],
        # Clarify's rule: no record explained, no kernel_shap list at all.
        "explanations": {"kernel_shap": explanations} if any(explanations) else {},
    }
    body = json.dumps(answer).encode()
    output = ModelOutput("application/json", call.requested_variant(), [body])
    return await deliver(call, output)


def parse_records(body: bytes, content_type: str) -> list[Record]:
    """The records of a CSV or JSON Lines body, as lists of numbers."""
    try:
        lines = [line for line in body.decode().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise validation_error(f"The {content_type} body is not UTF-8 text.") from None
    if not lines:
        raise validation_error("The request has no record to explain.")
    return [_record(line, number, content_type) for number, line in enumerate(lines, 1)]


def _record(line: str, number: int, content_type: str) -> Record:
    try:
        values: Any = (
            [float(value) for value in line.split(",")] if content_type == CSV else json.loads(line)
        )
    except ValueError:
        values = None
    if not isinstance(values, list) or not values or not all(_is_number(v) for v in values):
        raise validation_error(f"Record {number} is not a list of numbers in {content_type}.")
    return [float(v) for v in values]


def _is_number(value: object) -> bool:
    # JSON has no NaN or infinity, and the answer is JSON.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def kernel_shap(record: Sequence[float]) -> list[dict[str, Any]]:
    """A record's explanation: per feature, its header and its attribution to the one label."""
    return [
        {"feature_header": f"feature_{index}", "attributions": [{"attribution": [value]}]}
        for index, value in enumerate(record)
    ]


def _model_output(score: float, accept: str) -> list[float] | dict[str, float]:
    # What the model container answers for one record: a CSV row or a JSON Lines object.
    return [score] if accept == CSV else {LABEL: score}


def _line(output: list[float] | dict[str, float]) -> str:
    if isinstance(output, list):
        return ",".join(json.dumps(value) for value in output) + "\n"
    return json.dumps(output) + "\n"


def _compile(expression: str) -> Any:
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as error:
        raise validation_error(
            f"EnableExplanations {expression!r} is not a valid JMESPath expression: {error}"
        ) from None


def _explains(expression: Any, output: object) -> bool:
    try:
        result = expression.search(output)
    except jmespath.exceptions.JMESPathError as error:
        raise validation_error(f"EnableExplanations could not be evaluated: {error}") from None
    if not isinstance(result, bool):
        raise validation_error(
            f"EnableExplanations must evaluate to a Boolean; it gave {json.dumps(result)}."
        )
    return result


def _supported(member: str, value: str | None) -> str:
    """The media type of ``value`` (parameters dropped) if the explainer takes it, else a 400."""
    media_type = value.split(";", 1)[0].strip().lower() if value is not None else None
    if media_type not in (CSV, JSON_LINES):
        raise validation_error(
            f"{member} {value} is not supported by the explainer: use {CSV} or {JSON_LINES}."
        )
    return media_type
