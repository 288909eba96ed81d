"""``sagemaker-gateway serve | openapi | emulator | demo``: argparse to a Config, then hand over.

Nothing else happens here: a bad option is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.config import OPTIONS, ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    """The command line, with every serve option from the config table."""
    parser = argparse.ArgumentParser(
        prog="sagemaker-gateway",
        description="Validate, strip, sign and forward Amazon SageMaker runtime calls.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_options(commands.add_parser("serve", help="run the gateway"))
    _add_options(
        commands.add_parser(
            "openapi",
            help="print the OpenAPI 3.1 description of the gateway these options configure",
        )
    )

    emulator = commands.add_parser("emulator", help="run a local SageMaker runtime stand-in")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8081)
    emulator.add_argument("--region", default="us-east-1")
    emulator.add_argument(
        "--model-timeout", type=float, default=60.0, metavar="SECONDS",
        help="how long the model-timeout endpoint waits before its ModelError",
    )  # fmt: skip

    commands.add_parser("demo", help="emulator + gateway in one process, a few calls, a table")
    return parser


def _add_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", metavar="PATH", help="TOML file (also SMGW_CONFIG)")
    for option in OPTIONS:
        command.add_argument(option.flag, dest=option.name, metavar="VALUE", help=option.help)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m gateway``."""
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "openapi"):
        flags = {option.name: getattr(args, option.name) for option in OPTIONS}
        try:
            config = load_config(
                flags, config_path=args.config, require_region=args.command == "serve"
            )
        except ConfigError as exc:
            print(f"sagemaker-gateway: {exc}", file=sys.stderr)
            return 2
        if args.command == "openapi":
            from gateway.openapi import document_bytes

            sys.stdout.buffer.write(document_bytes(config) + b"\n")
            return 0
        from gateway.serving import serve

        serve(config)
        return 0
    if args.command == "emulator":
        from gateway.emulator import EmulatorSettings, run_emulator

        run_emulator(
            args.host,
            args.port,
            EmulatorSettings(region=args.region, model_timeout_s=args.model_timeout),
        )
        return 0
    from gateway.demo import run_demo

    return run_demo()
