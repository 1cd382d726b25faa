"""Command-line helpers shared by the entry points."""

from __future__ import annotations

import errno
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from text2live.config import CONF_DIR
from text2live.errors import Text2LiveError, is_out_of_memory, out_of_memory_message
from text2live.files import NO_SPACE, no_space_message


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


def _unlexable(overrides: list[str]) -> str | None:
    """The first override that Hydra's grammar cannot read, if any."""
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException:
            return override
    return None


def _quoting_hint(override: str) -> str:
    key, _, value = override.partition("=")
    return (
        f"the override {override!r} cannot be read (Hydra's override grammar takes characters such as emoji, "
        f"quotes and brackets only inside a quoted value): quote the value, e.g. '{key}=\"{value}\"'"
    )


def _is_group_override(override: str) -> bool:
    """``clip=tiny``, ``+sweep=fur``, ``hydra/launcher=slurm``: an override that picks a config group's option."""
    key = override.split("=", 1)[0].lstrip("+~")
    return "=" in override and (CONF_DIR / key).is_dir()


def _wrongly_typed(overrides: list[str], defaults: DictConfig) -> str | None:
    """A sentence about the first override that gives a word where the config holds a number, if any."""
    parser = OverridesParser.create()
    for override in overrides:
        if _is_group_override(override) or override.startswith(("+", "~")) or override.startswith("hydra"):
            continue
        parsed = parser.parse_overrides([override])[0]
        key, value = parsed.key_or_group, parsed.value()
        try:
            default = OmegaConf.select(defaults, key, throw_on_missing=False, throw_on_resolution_failure=False)
        except Exception:  # noqa: BLE001 - an unusual key: Hydra's own composition has already judged it
            continue
        if isinstance(value, str) and "${" in value:  # an interpolation: judged once resolved
            continue
        if isinstance(default, bool) and not isinstance(value, bool):
            return f"{key}={value} is not valid: {key} takes true or false"
        if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            kind = "an integer" if isinstance(default, int) else "a number"
            return f"{key}={value} is not valid: {key} takes {kind} (its default is {default})"
    return None


def check_overrides(config_name: str, argv: list[str], app: str) -> DictConfig | None:
    """Compose the command line's overrides once, so that a bad one ends in a single ``error:`` line (exit 2).

    Returns the composed config (``None`` for a multirun, which is checked with the first value of each swept
    key, and for other flags such as ``--help`` or ``--cfg``, which are left to Hydra).
    """
    flags = [arg for arg in argv if arg.startswith("-")]
    if any(flag not in MULTIRUN_FLAGS for flag in flags):
        return None
    argv = [arg for arg in argv if not arg.startswith("-")]
    try:
        bad = _unlexable(argv)
        if bad is not None:
            fail(_quoting_hint(bad))
        if flags:
            argv = _first_of_each_sweep(argv)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=argv, return_hydra_config=True)
            groups = [o for o in argv if _is_group_override(o)]
            defaults = compose(config_name=config_name, overrides=groups, return_hydra_config=True)
        bad = _wrongly_typed(argv, defaults)
        if bad is not None:
            fail(bad)
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as exc:
        message = str(exc)
        unknown = re.search(r"Could not override '([^']+)'", message)
        if unknown and "not in struct" in f"{message} {exc.__cause__}":
            key = unknown.group(1)
            given = next((arg for arg in argv if arg.split("=", 1)[0] == key), f"{key}=...")
            message = f"unknown config key '{key}': `{app} --help` lists the keys (write +{given} to add a new one)"
        fail(_one_line(message))
    return None if flags else cfg


def _to_log_files(message: str) -> None:
    """Append the error line to the log files of the run (Hydra's ``train.log``), not to the console."""
    record = logging.LogRecord("text2live", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class CommandFailed(SystemExit):
    """The exit of a command that printed its ``error:`` line (``message``)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(code)
        self.message = message


def fail(message: str, code: int = 2) -> None:
    """End the command with one ``error:`` line on stderr (and in the run's log file) and exit ``code``."""
    _to_log_files(f"error: {message}")
    print(f"error: {message}", file=sys.stderr)
    raise CommandFailed(message, code)


def os_error_message(exc: OSError) -> str | None:
    """One sentence for the file-system failures a user can act on (full disk, read-only, no permission)."""
    where = exc.filename or "a file"
    if exc.errno in NO_SPACE:
        return no_space_message(where)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {where} ({exc.strerror}): pass run_dir=<a folder you can write to>"
    return None


@contextmanager
def one_line_errors(what: str) -> Iterator[None]:
    """Turn the project's errors, a full or read-only disk, running out of memory and Ctrl-C into one ``error:``
    line and an exit code.

    ``what`` names the command's work in the Ctrl-C message (``"training"``).
    """
    logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks of its own
    try:
        yield
    except Text2LiveError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail(f"{what} was interrupted: run the same command again (it resumes from the last checkpoint, if any)", 130)
    except OSError as exc:
        message = os_error_message(exc)
        if message is None:
            raise
        fail(message)
    except (RuntimeError, MemoryError) as exc:
        where = is_out_of_memory(exc)
        if where is None:
            raise
        fail(out_of_memory_message(where))
