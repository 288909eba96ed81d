"""A local stand-in for the Amazon SageMaker runtime: verifies SigV4, answers by endpoint name.

It is the upstream of the tests, the demo and the benchmarks. Endpoint behaviours are listed in
:mod:`gateway.emulator.behaviours`; the SigV4 verifier is :mod:`gateway.emulator.sigv4`.
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
