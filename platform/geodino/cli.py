"""argparse built 1:1 from a config dataclass: one flag per field, same name, same default."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def bool_flag(text: str) -> bool:
    """DINO's bool flags take a value (--norm_last_layer false), which is also how SageMaker passes them."""
    lowered = str(text).lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, help_texts: dict[str, str] | None = None) -> None:
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        if item.default is dataclasses.MISSING or typing.get_origin(hint) is dict:
            continue
        kwargs: dict = {"default": item.default, "help": (help_texts or {}).get(item.name)}
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint  # X | None -> X
        if base is bool:
            kwargs.update(type=bool_flag, nargs="?", const=True, metavar="true|false")
        elif typing.get_origin(base) is tuple:
            kwargs.update(type=float, nargs=len(typing.get_args(base)))
        elif base in (int, float, str):
            kwargs["type"] = base
        parser.add_argument(f"--{item.name}", **kwargs)


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
    parser = argparse.ArgumentParser(prog=prog or cls.__name__)
    add_dataclass_arguments(parser, cls)
    return dataclass_from_args(cls, parser.parse_args(argv))
