"""Command-line helpers shared by the entry points."""

from __future__ import annotations

import re
import sys

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

from text2live.config import CONF_DIR


def _one_line(message: str) -> str:
    message = message.split("Config search path")[0]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("full_key:", "object_type=", "Set the environment"))]
    return " ".join(lines)


def check_overrides(config_name: str, argv: list[str], app: str) -> None:
    """Compose the command line's overrides once, so that a bad one ends in a single ``error:`` line (exit 2).

    Flags (``--help``, ``-m`` and the like) are left to Hydra.
    """
    if any(arg.startswith("-") for arg in argv):
        return
    try:
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
