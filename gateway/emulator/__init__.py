"""A local stand-in for the Amazon SageMaker runtime: verifies SigV4, answers by endpoint name.

It is the upstream of the tests, the demo and the benchmarks, and answers the three runtime
operations: InvokeEndpoint, InvokeEndpointWithResponseStream and InvokeEndpointAsync.

- :mod:`~gateway.emulator.app`: the aiohttp application, its middlewares and the operations;
- :mod:`~gateway.emulator.behaviours`: the table of endpoint names and what each answers;
- :mod:`~gateway.emulator.answers`: how an answer takes each operation's form;
- :mod:`~gateway.emulator.streaming`, :mod:`~gateway.emulator.eventstream`: streamed answers and
  the AWS event-stream framing they are written in;
- :mod:`~gateway.emulator.async_inference`, :mod:`~gateway.emulator.explainer`,
  :mod:`~gateway.emulator.sessions`: async calls, Clarify explanations, stateful sessions;
- :mod:`~gateway.emulator.sigv4`: the SigV4 verifier; :mod:`~gateway.emulator.journal`: what was
  received.
"""

from gateway.emulator.app import JOURNAL, make_emulator_app, run_emulator, running_emulator
from gateway.emulator.journal import JournalEntry
from gateway.emulator.settings import EmulatorSettings

__all__ = [
    "JOURNAL",
    "EmulatorSettings",
    "JournalEntry",
    "make_emulator_app",
    "run_emulator",
    "running_emulator",
]
