"""YAML configs -> frozen dataclasses.

A config file is YAML. It may name one or several ``_base_`` files (paths relative to itself); they are
loaded first, deep-merged in order, and the file's own keys win. ``KEY=VALUE`` overrides (``--opts``) are
applied last, with YAML typing (``a.b=3`` is an int, ``a.c=[1,2]`` a list, ``a.d=null`` None, ``a.e=1e-3`` a
float). Files and overrides are read by :mod:`detector.config_yaml`: a key set twice in one mapping is an
error naming the key, the file and both lines, and ``1e-3`` is a float (YAML 1.2), not a string.

The merged mapping is validated against the dataclasses in :mod:`detector.config_schema`: an unknown key
stops with an error that names the key, the file that set it and the closest valid key; a value of the
wrong type or out of range names the key, the value and what was expected. No number may be NaN or
infinite, whatever its key (``.nan`` / ``.inf`` are refused everywhere).

Only this module, :mod:`detector.models.build` and ``tools/`` read configs; model classes take explicit
keyword arguments.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union

import yaml

from detector.config_files import resolve_config_path
from detector.config_resolve import resolve_data_dependent
from detector.config_schema import Config
from detector.config_yaml import DuplicateKeyError, describe_yaml_error, load_yaml

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict", "config_from_mapping", "config_to_dict",
           "save_config", "section_from_mapping"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message says which key, where, and why."""


# ----------------------------------------------------------------------------------------------- loading
def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (nor a config shipped with focaldet, such as quickstart or "
                          "retinanet/retinanet_r50_fpn_1x_coco)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:  # a checkpoint, an image, or text in another encoding
        raise ConfigError(f"{path}: not a YAML config (not UTF-8 text: {err.reason} at byte {err.start}); a "
                          "config is a YAML text file saved as UTF-8") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}, {describe_yaml_error(err)}" if isinstance(err, DuplicateKeyError)
                          else f"{path}: not valid YAML: {describe_yaml_error(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict, update: dict, origins: dict | None, source: str, prefix: str = "") -> dict:
    """Deep-merge ``update`` into a copy of ``base``; record for every leaf which source set it (unless
    ``origins`` is None: a base file's tree, whose leaves were recorded, file by file, while it loaded)."""
    merged = dict(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, origins, source, dotted + ".")
        else:
            merged[key] = copy.deepcopy(value)
            if origins is not None:
                _record_origins(value, dotted, origins, source)
    return merged


def _record_origins(value: Any, dotted: str, origins: dict, source: str) -> None:
    origins[dotted] = source
    if isinstance(value, dict):
        for key, sub in value.items():
            _record_origins(sub, f"{dotted}.{key}", origins, source)


def _load_tree(path: Path, origins: dict, chain: tuple = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: circular _base_ inheritance through {' -> '.join(map(str, chain))}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    for base in bases:
        base_path = (path.parent / base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: _base_ file not found: {base_path}")
        # The base's leaves are recorded by its own _load_tree (with the file of a nested base that set them);
        # bases load in merge order, so a later base's record wins as its value does.
        merged = _merge(merged, _load_tree(base_path, origins, chain + (path,)), None, str(base_path))
    return _merge(merged, data, origins, str(path))


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE (for example schedule.max_iters=100)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {describe_yaml_error(err)}") from None
    return key.split("."), value


def _apply_overrides(tree: dict, overrides: Iterable[str], origins: dict) -> dict:
    for text in overrides:
        parts, value = _parse_override(text)
        node = tree
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
        _record_origins(value, ".".join(parts), origins, f"--opts {text}")
    return tree


# -------------------------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


class _NonFiniteError(ConfigError):
    """A float key holds NaN or an infinity (no key accepts them)."""


class _Validator:
    def __init__(self, origins: dict):
        self.origins = origins

    def where(self, dotted: str) -> str:
        parts = re.sub(r"\[\d+\]", "", dotted).split(".")  # a list item was set with its list
        for i in range(len(parts), 0, -1):
            source = self.origins.get(".".join(parts[:i]))
            if source:
                return source
        return "the defaults"

    def sources_under(self, dotted: str) -> str:
        """Every source that set a key inside the section ``dotted``."""
        prefix = f"{dotted}." if dotted else ""
        sources = {src for key, src in self.origins.items() if key.startswith(prefix) or key == dotted}
        return ", ".join(sorted(sources)) or "the defaults"

    def describe_keys(self, keys: list[str]) -> str:
        """"config key 'a.b' (set in FILE)" or "config keys 'a.b' (set in FILE), 'a.c' (set in ...)"."""
        parts = []
        for key in keys:
            is_section = key not in self.origins and any(k.startswith(f"{key}.") for k in self.origins)
            parts.append(f"'{key}' (set in {self.sources_under(key) if is_section else self.where(key)})")
        return f"config key{'s' if len(keys) > 1 else ''} {', '.join(parts)}"

    def build(self, cls: type, data: Any, dotted: str) -> Any:
        if not isinstance(data, dict):
            raise ConfigError(f"{dotted or 'config'} (set in {self.where(dotted)}) must be a mapping, "
                              f"got {data!r}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs = {}
        for key, value in data.items():
            full = f"{dotted}.{key}" if dotted else str(key)
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
                hint = f"; did you mean '{dotted + '.' if dotted else ''}{close[0]}'?" if close else \
                    f"; valid keys here: {', '.join(names)}"
                raise ConfigError(f"unknown config key '{full}' in {self.where(full)}{hint}")
            kwargs[key] = self.convert(hints[key], value, full)
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as err:
            # Name the keys the check complains about, with the file (or override) that set each of them.
            named = _keys_named_in(str(err), dotted, names)
            if not named:
                raise ConfigError(f"{dotted or 'config'} (set in {self.sources_under(dotted)}): {err}") from err
            keys = [f"{dotted}.{name}" if dotted else name for name in named]
            raise ConfigError(f"{self.describe_keys(keys)}: {err}") from err

    def convert(self, tp: Any, value: Any, dotted: str) -> Any:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, dotted)
        if origin in (Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            sections = [a for a in args if dataclasses.is_dataclass(a)]
            if isinstance(value, dict) and len(sections) == 1:  # a section or null: the section's own errors
                return self.build(sections[0], value, dotted)
            for arg in (a for a in args if a is not type(None)):
                try:
                    return self.convert(arg, value, dotted)
                except _NonFiniteError:
                    raise  # the number's type fits; its value does not
                except ConfigError:
                    continue
            raise self.type_error(tp, value, dotted)
        if origin is Literal:
            if value not in typing.get_args(tp):
                raise self.type_error(tp, value, dotted)
            return value
        if origin is list:
            if not isinstance(value, (list, tuple)):
                raise self.type_error(tp, value, dotted)
            (item_type,) = typing.get_args(tp)
            return [self.convert(item_type, v, f"{dotted}[{i}]") for i, v in enumerate(value)]
        if tp is bool:
            if not isinstance(value, bool):
                raise self.type_error(tp, value, dotted)
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.type_error(tp, value, dotted)
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.type_error(tp, value, dotted)
            if not math.isfinite(value):  # .nan / .inf: a NaN compares False with every range check
                raise _NonFiniteError(f"config key '{dotted}' (set in {self.where(dotted)}) must be a finite "
                                      f"number, got {value!r}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise self.type_error(tp, value, dotted)
            return value
        raise TypeError(f"unsupported config type {tp!r} at {dotted}")

    def type_error(self, tp: Any, value: Any, dotted: str) -> ConfigError:
        hint = ""
        if isinstance(value, bool) and _accepts_strings(tp):
            hint = (" (YAML reads unquoted on / off / yes / no as booleans: quote the value, e.g. "
                    f"{dotted}='off' in --opts or \"off\" in a file)")
        return ConfigError(f"config key '{dotted}' (set in {self.where(dotted)}) must be {_type_name(tp)}, "
                           f"got {value!r}{hint}")


def _accepts_strings(tp: Any) -> bool:
    """Whether a config type admits some string (str, a Literal of strings, or a union holding one)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return any(isinstance(arg, str) for arg in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return any(_accepts_strings(arg) for arg in typing.get_args(tp))
    return tp is str


def _keys_named_in(message: str, section: str, names: list[str]) -> list[str]:
    """The fields of ``section`` (dotted, "" for the root) that a validation message names: as a bare word
    ("iters"), after the section's own name ("head.prior_prob"), or in a longer path through it
    ("model.loss_box.type" names loss_box of model, not model's type)."""
    last = section.rsplit(".", 1)[-1] if section else ""
    named = []
    for token in re.findall(r"[A-Za-z_][\w.]*\w|[A-Za-z_]", message):
        parts = token.split(".")
        for name in names:
            bare = len(parts) == 1 and parts[0] == name
            dotted = last and any(parts[i] == last and parts[i + 1] == name for i in range(len(parts) - 1))
            if (bare or dotted) and name not in named:
                named.append(name)
    return named


def config_from_dict(data: dict, origins: dict | None = None) -> Config:
    """Validate a plain mapping (as read from YAML) into a :class:`Config`."""
    validator = _Validator(origins or {})
    cfg = validator.build(Config, data, "")
    try:
        cfg = resolve_data_dependent(cfg)  # the synthetic generator switch, model.num_classes: auto
        cfg.check()
    except ValueError as err:
        # Rules across sections name their keys in full ("data.synthetic.num_classes"): say who set them.
        keys = list(dict.fromkeys(key for key in re.findall(r"\b[a-z_]+(?:\.[a-z_0-9]+)+\b", str(err))
                                  if _is_config_key(key)))
        where = f" [{validator.describe_keys(keys)}]" if keys else ""
        raise ConfigError(f"{err}{where}") from err
    return cfg


def _is_config_key(dotted: str) -> bool:
    """Whether ``dotted`` (e.g. "model.num_classes") names a key of the schema."""
    cls: Any = Config
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            return False
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = hints[part]
    return True


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config with ``_base_`` inheritance and ``KEY=VALUE`` overrides, validated. ``path`` is a file,
    or names a config shipped with the package (``"quickstart"``; :mod:`detector.config_files`)."""
    origins: dict = {}
    tree = _load_tree(resolve_config_path(path), origins)
    tree = _apply_overrides(tree, overrides, origins)
    return config_from_dict(tree, origins)


def config_from_mapping(data: dict, overrides: Iterable[str] = (), source: str = "a stored config") -> Config:
    """Validate a resolved config kept as plain data (e.g. the one a checkpoint carries, :func:`config_to_dict`'s
    output) with ``KEY=VALUE`` overrides applied last; errors name ``source`` as where a key was set."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping, got {type(data).__name__}")
    origins: dict = {}
    tree = _apply_overrides(_merge({}, data, origins, source), overrides, origins)
    return config_from_dict(tree, origins)


def section_from_mapping(cls: type, data: Any, dotted: str, source: str) -> Any:
    """One config section (the dataclass ``cls``, e.g. TTAConfig) validated from a plain mapping as a config
    file's would be; errors name the key as ``dotted.key`` set in ``source``."""
    return _Validator({dotted: source}).convert(cls, data, dotted)


def config_to_dict(cfg: Config) -> dict:
    """The resolved config as plain Python data (what :func:`save_config` writes)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML; loading that file gives back an equal config."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
