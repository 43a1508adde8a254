"""Settings declared once, as vLLM's `EngineArgs` does: a settings dataclass's fields are the single definition.

Each field made with `setting(...)` carries its default, help, CLI flag (and aliases), config key and, where a
guide's script read one, environment variable. From those fields come the argparse flags (`add_flags`), the
settings a command parsed (`from_args`), the settings of a config entry (`from_config`), the argv a rule's shell
line passes (`to_argv`) and the JSON round trip of records (`to_dict` / `from_dict`), so none of them can drift.

Nested settings dataclasses are fields too: `config=""` reads them from the parent's config mapping, a key reads
them from that sub-mapping; a key starting with "/" is read from the top entry given to `from_config` (a setting
of a nested class kept elsewhere in the config, e.g. a KD job's `tokenizer` beside its `engine:` section).
Two fields may share a flag (a job's `--seed` is also its engine's): one value fills
both. Environment variables are read only by commands that ask for them (`from_args(..., environ=os.environ)`,
the MaxText guide's standalone script), so a rule's command line alone decides what a job does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from .errors import DistilleryError

_AUTO = object()
_KIND_WORDS = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    dict: "KEY=VALUE pairs or a JSON object",
}
_UNSET = object()  # argparse's default: the flag was not given


@dataclasses.dataclass(frozen=True)
class Setting:
    help: str
    flag: str | None
    aliases: tuple[str, ...] = ()
    env: str | None = None
    config: str | None = None
    choices: tuple | None = None
    metavar: str | None = None
    secret: bool = False  # never written to records (an API key)
    required: bool = False  # a command's flag that must be given (a path the rule passes itself)
    # Flags that set the field to a fixed value, whatever its own flag says (`--keep-original-precision`).
    switches: tuple[tuple[str, Any], ...] = ()


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None | object = _AUTO,
    aliases: tuple[str, ...] = (),
    env: str | None = None,
    config: str | None | object = _AUTO,
    choices: tuple | list | None = None,
    metavar: str | None = None,
    secret: bool = False,
    required: bool = False,
    switches: Mapping[str, Any] | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that is a setting. `flag=None`: no CLI flag; `config=None`: not in the config.
    `switches`: more flags, each setting the field to its value (`{"--pytorch-bin": "pytorch_bin"}`)."""
    spec = Setting(help, None, tuple(aliases), env, None, tuple(choices) if choices else None, metavar, secret,
                   required, tuple((switches or {}).items()))  # fmt: skip
    meta = {"flag": flag, "config": config, "setting": spec}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"distillery": meta})


def nested(cls: type, *, config: str | None | object = _AUTO) -> Any:
    """A field holding another settings dataclass; its fields become flags and config keys of the parent."""
    return dataclasses.field(default_factory=cls, metadata={"distillery": {"nested": True, "config": config}})


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    kind: type  # int, float, str, bool, tuple (of str), dict, or a settings dataclass
    optional: bool
    default: Any
    setting: Setting | None  # None: a nested settings dataclass
    config: str | None

    @property
    def dest(self) -> str:
        return self.setting.flag.lstrip("-").replace("-", "_")

    def switch_dest(self, switch: str) -> str:
        return f"{self.dest}__{switch.lstrip('-').replace('-', '_')}"


def _kind(annotation: Any) -> tuple[type, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _kind(inner)[0], True
    origin = typing.get_origin(annotation) or annotation
    return origin, False


def fields_of(cls: type) -> list[_Field]:
    hints = typing.get_type_hints(cls)
    result = []
    for field in dataclasses.fields(cls):
        meta = field.metadata.get("distillery")
        if meta is None:
            continue
        kind, optional = _kind(hints[field.name])
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        config = field.name if meta["config"] is _AUTO else meta["config"]
        if meta.get("nested"):
            result.append(_Field(field.name, kind, optional, default, None, config))
            continue
        flag = meta["flag"]
        if flag is _AUTO:
            flag = "--" + field.name.replace("_", "-")
        spec = dataclasses.replace(meta["setting"], flag=flag, config=config)
        result.append(_Field(field.name, kind, optional, default, spec, config))
    return result


def _flat(cls: type) -> list[_Field]:
    """Every setting with a flag, nested classes included, each flag once."""
    seen: dict[str, _Field] = {}
    for field in fields_of(cls):
        for inner in _flat(field.kind) if field.setting is None else [field]:
            if inner.setting and inner.setting.flag and inner.setting.flag not in seen:
                seen[inner.setting.flag] = inner
    return list(seen.values())


def _parse_value(field: _Field, text: str, source: str) -> Any:
    if field.optional and text.lower() in ("none", "null"):
        return None
    caster = {bool: _parse_bool, dict: _parse_mapping}.get(field.kind, field.kind)
    try:
        value = caster(text)
    except ValueError:
        raise DistilleryError(f"{source}={text!r} is not {_KIND_WORDS.get(field.kind, field.kind.__name__)}") from None
    if field.setting.choices and value not in field.setting.choices:
        choices = ", ".join(map(str, field.setting.choices))
        raise DistilleryError(f"{source}={text!r} is not one of {choices}")
    return value


def _parse_mapping(text: str) -> dict:
    """A dict setting as one flag: JSON (`{"float32": 1e-5}`) or `KEY=VALUE,KEY=VALUE` (values read as JSON where
    they parse, e.g. numbers, else kept as text)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(text) from None
        if not isinstance(value, dict):
            raise ValueError(text)
        return value
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(text)
        try:
            mapping[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            mapping[key.strip()] = value.strip()
    return mapping


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _help(field: _Field) -> str:
    spec = field.setting
    shown = "" if field.default in (None, (), {}, "") or field.kind is bool else f" (default: {field.default})"
    env = f" (${spec.env})" if spec.env else ""
    return f"{spec.help}{shown}{env}".replace("%", "%%")


def add_flags(parser: argparse.ArgumentParser | Any, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add a flag for every setting of `cls` (and of its nested settings) that has one and is not in `skip`."""
    existing = {option for action in parser._actions for option in action.option_strings}
    for field in _flat(cls):
        spec = field.setting
        if spec.flag in skip or spec.flag in existing:
            continue
        names = [spec.flag, *spec.aliases]
        options: dict[str, Any] = {"dest": field.dest, "default": _UNSET, "help": _help(field)}
        if spec.required:
            options["required"] = True
        if field.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif field.kind is tuple:
            # append needs a list to add to: None stands for "not given" here
            options.update(action="append", metavar=spec.metavar, default=None)
        else:
            options.update(metavar=spec.metavar, choices=spec.choices, type=_argparse_type(field))
        parser.add_argument(*names, **options)
        for switch, value in [(switch, value) for switch, value in spec.switches if switch not in existing]:
            parser.add_argument(switch, dest=field.switch_dest(switch), action="store_true",
                                help=f"{spec.flag} {value}, whatever {spec.flag} says")  # fmt: skip


def _argparse_type(field: _Field):
    def parse(text: str) -> Any:
        try:
            return _parse_value(field, text, field.setting.flag)
        except DistilleryError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = field.kind.__name__
    return parse


def from_args(cls: type, args: argparse.Namespace, environ: Mapping[str, str] | None = None, **overrides: Any):
    """The settings a command was given: its flags, else (where `environ` is passed) the setting's variable, else
    the default. `overrides` fill fields the command computes itself."""
    values = {}
    for field in fields_of(cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif field.setting is None:
            values[field.name] = from_args(field.kind, args, environ)
        else:
            values[field.name] = _given(field, args, environ)
    return cls(**values)


def _given(field: _Field, args: argparse.Namespace, environ: Mapping[str, str] | None) -> Any:
    spec = field.setting
    switched = [value for switch, value in spec.switches if getattr(args, field.switch_dest(switch), False)]
    if switched:
        return switched[0]
    value = getattr(args, field.dest, _UNSET) if spec.flag else _UNSET
    if field.kind is tuple and value is None:
        value = _UNSET
    if value is not _UNSET:
        return tuple(value) if field.kind is tuple else value
    if environ is not None and spec.env and environ.get(spec.env, "") != "":
        text = environ[spec.env]
        if field.kind is tuple:
            return (text,)
        try:
            return _parse_value(field, text, f"environment variable {spec.env}")
        except DistilleryError as exc:
            raise DistilleryError(str(exc), hint=f"set it to one (or unset it), or pass {_flag_like(spec)}") from None
    return field.default


def _flag_like(spec: Setting) -> str:
    """The flag spelled like the setting's variable where one is (GEN_BATCH_SIZE: --gen-batch-size)."""
    spelled = "--" + spec.env.lower().replace("_", "-")
    return spelled if spelled in (spec.flag, *spec.aliases) else spec.flag


def from_config(cls: type, entry: Mapping[str, Any], _root: Mapping[str, Any] | None = None, **overrides: Any):
    """The settings of a config entry (validated against the schema already); missing keys take the defaults."""
    root = entry if _root is None else _root
    values = {}
    for field in fields_of(cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif field.config is None:
            values[field.name] = field.default
        elif field.setting is None:
            section = _lookup(entry, field.config, {}) if field.config else entry
            values[field.name] = from_config(field.kind, section, root)
        else:
            found = root if field.config.startswith("/") else entry
            value = _lookup(found, field.config.lstrip("/"), field.default)
            values[field.name] = tuple(value) if field.kind is tuple and value is not None else value
    return cls(**values)


def _lookup(entry: Mapping[str, Any], dotted: str, default: Any) -> Any:
    for key in dotted.split("."):
        if not isinstance(entry, Mapping) or entry.get(key) is None:
            return default
        entry = entry[key]
    return entry


def to_argv(settings: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that make `from_args` give `settings` back: a flag for each value other than its default."""
    argv: list[str] = []
    given: dict[str, Any] = {}
    for field, value in _flat_values(settings):
        spec = field.setting
        if not spec.flag or spec.flag in skip or spec.secret:
            continue
        if spec.flag in given:
            if given[spec.flag] != value:
                raise ValueError(f"{spec.flag} holds two values: {given[spec.flag]!r} and {value!r}")
            continue
        given[spec.flag] = value
        if value == field.default:
            continue
        if field.kind is bool:
            argv.append(spec.flag if value else "--no-" + spec.flag[2:])
        elif field.kind is tuple:
            for item in value:
                argv += [spec.flag, str(item)]
        elif field.kind is dict:
            argv += [spec.flag, json.dumps(value, sort_keys=True)]
        else:
            argv += [spec.flag, "none" if value is None else str(value)]
    return argv


def _flat_values(settings: Any):
    for field in fields_of(type(settings)):
        value = getattr(settings, field.name)
        if field.setting is None:
            yield from _flat_values(value)
        else:
            yield field, value


def to_dict(settings: Any) -> dict:
    """Plain JSON data; secrets are left out (they come from the environment again)."""
    data = {}
    for field in fields_of(type(settings)):
        value = getattr(settings, field.name)
        if field.setting is None:
            data[field.name] = to_dict(value)
        elif not field.setting.secret:
            data[field.name] = list(value) if field.kind is tuple else value
    return data


def from_dict(cls: type, data: Mapping[str, Any]):
    """The inverse of `to_dict`: unknown keys are refused, missing ones take the defaults."""
    known = {field.name: field for field in fields_of(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise DistilleryError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        field = known[name]
        if field.setting is None:
            values[name] = from_dict(field.kind, value)
        else:
            values[name] = tuple(value) if field.kind is tuple and value is not None else value
    return cls(**values)


def config_defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """Each setting's default by its dotted config key: what the config schema's defaults must equal."""
    defaults = {}
    for field in fields_of(cls):
        if field.config is None:
            continue
        key = f"{prefix}.{field.config}".strip(".") if field.config else prefix
        if field.config.startswith("/"):
            key = field.config[1:]  # from the top entry, whatever the nesting
        if field.setting is None:
            defaults.update(config_defaults(field.kind, key))
        else:
            defaults[key] = list(field.default) if field.kind is tuple else field.default
    return defaults
