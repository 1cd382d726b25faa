"""Command-line helpers shared by the entry points."""

from __future__ import annotations

import re
import sys

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

from text2live.config import CONF_DIR


def _one_line(message: str) -> str:
    message = message.split("Config search path")[0]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("full_key:", "object_type=", "Set the environment"))]
    return " ".join(lines)


MULTIRUN_FLAGS = ("-m", "--multirun")


def _first_of_each_sweep(overrides: list[str]) -> list[str]:
    """The overrides of a multirun's first job (``seed=0,1,2`` -> ``seed=0``), to check them once."""
    first = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            first.append(override.input_line)
            continue
        try:
            value = next(iter(override.sweep_string_iterator()))
        except Exception:  # noqa: BLE001 - a sweep form without a plain first value (glob): left to Hydra
            continue
        first.append(f"{override.get_key_element()}={value}")
    return first


def check_overrides(config_name: str, argv: list[str], app: str) -> None:
    """Compose the command line's overrides once, so that a bad one ends in a single ``error:`` line (exit 2).

    A multirun (``-m``) is checked with the first value of each swept key. Other flags (``--help``,
    ``--cfg`` and the like) are left to Hydra.
    """
    flags = [arg for arg in argv if arg.startswith("-")]
    if any(flag not in MULTIRUN_FLAGS for flag in flags):
        return
    argv = [arg for arg in argv if not arg.startswith("-")]
    try:
        if flags:
            argv = _first_of_each_sweep(argv)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name=config_name, overrides=argv, return_hydra_config=True)
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as exc:
        message = str(exc)
        unknown = re.search(r"Could not override '([^']+)'", message)
        if unknown and "not in struct" in f"{message} {exc.__cause__}":
            key = unknown.group(1)
            given = next((arg for arg in argv if arg.split("=", 1)[0] == key), f"{key}=...")
            message = f"unknown config key '{key}': `{app} --help` lists the keys (write +{given} to add a new one)"
        print(f"error: {_one_line(message)}", file=sys.stderr)
        sys.exit(2)
