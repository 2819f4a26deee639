"""argparse built 1:1 from a config dataclass: one flag per field, same name, same default."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from geodino.errors import GeodinoError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes read like geodino's own: one line `prog: error: ...`, exit status 2, and a pointer
    to --help instead of a usage block that, for 50 flags, buries the line that matters. Abbreviations are off:
    `--batch_size` must not quietly mean `--batch_size_per_gpu`, nor `--lr` one day `--lrs`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def flag(default: Any = None, help: str = "", *, choices: Sequence[str] | None = None,
         aliases: Sequence[str] = ()) -> Any:
    """A config field and its command-line flag in one place: the help text (which recommends values, as DINO's
    does) and the allowed values live on the field, so code, `--help` and the README's flag tables agree.
    `aliases` are older spellings that keep working (`--out` for `--output_dir`): one vocabulary across the
    scripts without breaking a command line, or a SageMaker job, written before it."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_default(item: dataclasses.Field) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def shown_default(item: dataclasses.Field) -> str | None:
    """The default as a user would type it, or None when there is none to show."""
    default = field_default(item)
    if default is None or default == "" or default == []:
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default))
    return str(default)


def flag_help(item: dataclasses.Field) -> str:
    """The field's help with its default, as --help shows it (argparse reads % as a format character)."""
    text, default = item.metadata.get("help", ""), shown_default(item)
    return (f"{text} (default: {default})" if default else text).replace("%", "%%")


def bool_flag(text: str) -> bool:
    """DINO's bool flags take a value (--norm_last_layer false), which is also how SageMaker passes them."""
    lowered = str(text).lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def auto_bool_flag(text: str) -> bool | None:
    """A bool flag whose default is decided at run time (--use_gpu auto): auto is None."""
    if str(text).lower() == "auto":
        return None
    try:
        return bool_flag(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected true, false or auto, not {text!r}") from None


def finite_float(text: str) -> float:
    """float() takes 'nan' and 'inf', which pass every `<= 0` check and surface only as a NaN loss mid-run."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, not {text!r}")
    return value


ARGUMENT_TYPES = {int: int, float: finite_float, str: str}


def flag_fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    """The fields of a config that are flags, with their type hints: not a required field (prepare's positional
    ARCHIVE), nor a dict (submit_sagemaker's task flags, which follow `--`). The README's flag reference lists the
    same ones (tools/flag_reference.py)."""
    hints = typing.get_type_hints(cls)
    return [(item, hints[item.name]) for item in dataclasses.fields(cls)
            if not (item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING)
            and typing.get_origin(hints[item.name]) is not dict]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    taken = {action.dest for action in parser._actions}  # flags the script spelt differently (sweep's --backbone)
    for item, hint in flag_fields(cls):
        if item.name in taken:
            continue
        kwargs: dict = {"default": field_default(item), "help": flag_help(item)}
        if item.metadata.get("choices"):
            kwargs["choices"] = item.metadata["choices"]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint  # X | None -> X
        if base is bool and item.default is None:
            kwargs.update(type=auto_bool_flag, nargs="?", const=True, metavar="true|false|auto")
        elif base is bool:
            kwargs.update(type=bool_flag, nargs="?", const=True, metavar="true|false")
        elif typing.get_origin(base) is tuple:
            kwargs.update(type=finite_float, nargs=len(typing.get_args(base)))
        elif typing.get_origin(base) is list:
            kwargs.update(type=ARGUMENT_TYPES.get(typing.get_args(base)[0], typing.get_args(base)[0]), nargs="+")
        elif base in ARGUMENT_TYPES:
            kwargs["type"] = ARGUMENT_TYPES[base]
        parser.add_argument(f"--{item.name}", *item.metadata.get("aliases", ()), dest=item.name, **kwargs)


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the flags typed on this command line, whatever their value.

    Why not compare with the defaults: `--epochs 100` typed by a user must win over a preset's 30 even
    though 100 is also the default. Parsed a second time with every default suppressed, the namespace
    holds exactly what was typed.
    """
    saved = {id(action): action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action in parser._actions:
            action.default = saved[id(action)]


def dataclass_from_args(cls, namespace: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(namespace).items() if k in names})


def parse_config(cls, argv: list[str], prog: str | None = None):
    """A config dataclass from command-line style arguments (SageMaker hyperparameters, flags after `--`)."""
    return parse_config_and_given(cls, argv, prog)[0]


def parse_config_and_given(cls, argv: list[str], prog: str | None = None):
    """The config and the names of the fields typed in `argv`: what a caller filling in values (the SageMaker
    host's channels) must leave alone even where the typed value equals the default."""
    parser = ArgumentParser(prog=prog or cls.__name__)
    add_dataclass_arguments(parser, cls)
    return dataclass_from_args(cls, parser.parse_args(argv)), given_flags(parser, argv)


def script_path(name: str, beside: str) -> str:
    """The entry script `name` in the folder of the script `beside` (its __file__), as the user can type it from
    where they are: relative inside the checkout, absolute outside it."""
    from geodino import storage

    path = os.path.join(os.path.dirname(os.path.abspath(beside)), name)
    return os.path.relpath(path) if storage.lies_inside(path, os.getcwd()) else path


def run_entry(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run an entry script's main: a user's mistake (GeodinoError, also when raised inside a Ray task) ends as
    one line `prog: error: ...` and exit status 2; Ctrl-C as one line `prog: interrupted ...` and 130 (the
    shell's status for it); anything else keeps its traceback. GEODINO_DEBUG=1 shows the traceback of user
    errors and interruptions too."""
    try:
        return main(argv)
    except KeyboardInterrupt as interrupt:
        if os.environ.get("GEODINO_DEBUG"):
            raise
        print(f"{prog}: interrupted" + (f": {interrupt}" if str(interrupt) else ""), file=sys.stderr)
        return 130
    except Exception as error:
        cause = user_error(error)
        if cause is None or os.environ.get("GEODINO_DEBUG"):
            raise
        # geodino's messages are one line; Ray Data appends its retry advice to a task's exception on lines of its own
        print(f"{prog}: error: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}", file=sys.stderr)
        return 2


def user_error(error: BaseException) -> GeodinoError | None:
    """The GeodinoError behind `error`: itself, or the cause Ray wrapped it in (RayTaskError keeps it as .cause)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(getattr(error, "cause", None), GeodinoError):
            return error.cause  # a RayTaskError is an instance of its cause's class too, but its text is Ray's
        if isinstance(error, GeodinoError):
            return error
        seen.add(id(error))
        error = getattr(error, "cause", None) or error.__cause__
    return None
