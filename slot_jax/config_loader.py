"""Loads `configs/NAME.py[:variant]` files and applies `--config.a.b=value` overrides.

Overrides must name an existing key and parse to the key's type; anything else is refused by
name rather than failing later inside training.
"""
import ast
import importlib.util
import pathlib

import ml_collections

from slot_jax.errors import UserError


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`spec` is 'path/to/config.py' or 'path/to/config.py:variant'."""
    path, _, variant = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise UserError(f"config file {path!r} not found: pass --config=configs/<name>.py[:variant]")
    module_spec = importlib.util.spec_from_file_location(f"slot_jax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path!r} defines no get_config(variant)")
    try:
        config = module.get_config(variant or None)
    except ValueError as error:
        raise UserError(str(error)) from None
    return config


def _parse_value(key: str, text: str, current):
    def fail(expected):
        return UserError(f"--config.{key}={text!r}: expected {expected} (current value {current!r})")

    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise fail("true or false")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise fail("an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise fail("a number") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise fail("a tuple such as (32, 32)") from None
        value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if current and not all(isinstance(v, type(current[0])) or
                                (isinstance(current[0], float) and isinstance(v, int)) for v in value):
            raise fail(f"a tuple of {type(current[0]).__name__}")
        return value
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config: ml_collections.ConfigDict, dotted_key: str, text: str) -> None:
    parts = dotted_key.split(".")
    parent = config
    for depth, part in enumerate(parts):
        if not isinstance(parent, ml_collections.ConfigDict) or part not in parent:
            where = "config." + ".".join(parts[:depth]) if depth else "config"
            keys = ", ".join(sorted(parent.keys())) if isinstance(parent, ml_collections.ConfigDict) else "none"
            raise UserError(f"unknown config key 'config.{dotted_key}': {where} has keys {keys}")
        if depth < len(parts) - 1:
            parent = parent[part]
    leaf = parts[-1]
    current = parent[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise UserError(f"config.{dotted_key} is a group; override one of its keys: {', '.join(sorted(current.keys()))}")
    parent[leaf] = _parse_value(dotted_key, text, current)


def config_from_args(spec: str, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    config = load_config(spec)
    for key, text in overrides.items():
        apply_override(config, key, text)
    return config
