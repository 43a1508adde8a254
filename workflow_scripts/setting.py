"""Settings declared once, as vLLM's `EngineArgs` does: a settings dataclass's fields are the single definition.

Each field made with `setting(...)` carries its default, help, CLI flag (and aliases), config key and, where a
guide's script read one, environment variable. From those fields come the argparse flags (`add_flags`), the
settings a command parsed (`from_args`), the settings of a config entry (`from_config`), the argv a rule's shell
line passes (`to_argv`) and the JSON round trip of records (`to_dict` / `from_dict`), so none of them can drift.

Nested settings dataclasses are fields too: `config=""` reads them from the parent's config mapping, a key reads
them from that sub-mapping; a key starting with "/" is read from the top entry given to `from_config` (a setting
of a nested class kept elsewhere in the config, e.g. a KD job's `tokenizer` beside its `engine:` section).
A parent whose config lays a nested class out its own way names the keys (`nested(..., keys=...)`: an ICM job's
engine settings are flat keys of its entry) and may leave out settings it has itself (`without=`).
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
    vllm: str | None = None  # the keyword of vLLM's engine arguments it is, if any
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
    vllm: str | bool = False,
    required: bool = False,
    switches: Mapping[str, Any] | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that is a setting. `flag=None`: no CLI flag; `config=None`: not in the config;
    `vllm=True` (or vLLM's name for it): an engine argument of vLLM's too; `switches`: more flags, each setting
    the field to its value (`{"--pytorch-bin": "pytorch_bin"}`)."""
    choices = tuple(choices) if choices else None
    spec = Setting(help, None, tuple(aliases), env, None, choices, metavar, secret,
                   required=required, switches=tuple((switches or {}).items()))  # fmt: skip
    meta = {"flag": flag, "config": config, "vllm": vllm, "setting": spec}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"distillery": meta})


def nested(
    cls: type,
    *,
    config: str | None | object = _AUTO,
    keys: Mapping[str, str] | None = None,
    without: tuple[str, ...] = (),
) -> Any:
    """A field holding another settings dataclass; its fields become flags and config keys of the parent.

    `keys`: the config key of each inner setting the parent's config has, relative to `config`'s section, where
    they are not the inner class's own keys; an inner setting not named is not in the parent's config.
    `without`: inner settings that are not the parent's at all (no flag, no argv: their defaults), where the
    parent has a setting of the same flag that means something else."""
    meta = {"nested": True, "config": config, "keys": keys, "without": tuple(without)}
    return dataclasses.field(default_factory=cls, metadata={"distillery": meta})


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    kind: type  # int, float, str, bool, tuple (of str), dict, or a settings dataclass
    optional: bool
    default: Any
    setting: Setting | None  # None: a nested settings dataclass
    config: str | None
    keys: Mapping[str, str] | None = None  # a nested class's config keys, as its parent lays them out
    without: tuple[str, ...] = ()  # a nested class's settings that are not its parent's

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
            result.append(_Field(field.name, kind, optional, default, None, config, meta["keys"], meta["without"]))
            continue
        flag = meta["flag"]
        if flag is _AUTO:
            flag = "--" + field.name.replace("_", "-")
        vllm = field.name if meta["vllm"] is True else meta["vllm"] or None
        spec = dataclasses.replace(meta["setting"], flag=flag, config=config, vllm=vllm)
        result.append(_Field(field.name, kind, optional, default, spec, config))
    return result


def _members(field: _Field) -> list[_Field]:
    """The settings of a nested field as its parent sees them: less `without`, with the parent's config keys."""
    inner = [member for member in fields_of(field.kind) if member.name not in field.without]
    if field.keys is None:
        return inner
    return [dataclasses.replace(member, config=field.keys.get(member.name)) for member in inner]


def _flat(cls: type) -> list[_Field]:
    return _flat_of(fields_of(cls))


def _flat_of(fields: list[_Field]) -> list[_Field]:
    """Every setting with a flag, nested classes included, each flag once."""
    seen: dict[str, _Field] = {}
    for field in fields:
        for inner in _flat_of(_members(field)) if field.setting is None else [field]:
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
    choices = field.setting.choices
    if choices and value not in choices:
        # a choice in other letters is that choice: the reference's ICM.py says `--testbed truthfulQA`
        same = [choice for choice in choices if isinstance(value, str) and str(choice).lower() == value.lower()]
        if not same:
            raise DistilleryError(f"{source}={text!r} is not one of {', '.join(map(str, choices))}")
        value = same[0]
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
    return cls(**{**_values_from_args(fields_of(cls), args, environ), **overrides})


def _values_from_args(fields: list[_Field], args: argparse.Namespace, environ: Mapping[str, str] | None) -> dict:
    return {field.name: _arg_value(field, args, environ) for field in fields}


def _arg_value(field: _Field, args: argparse.Namespace, environ: Mapping[str, str] | None) -> Any:
    if field.setting is None:
        return field.kind(**_values_from_args(_members(field), args, environ))
    return _given(field, args, environ)


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
    values = _values_from_config(fields_of(cls), entry, entry if _root is None else _root)
    return cls(**{**values, **overrides})


def _values_from_config(fields: list[_Field], entry: Mapping[str, Any], root: Mapping[str, Any]) -> dict:
    return {field.name: _config_value(field, entry, root) for field in fields}


def _config_value(field: _Field, entry: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    if field.config is None:
        return field.default
    if field.setting is None:
        section = _lookup(entry, field.config, {}) if field.config else entry
        return field.kind(**_values_from_config(_members(field), section, root))
    found = root if field.config.startswith("/") else entry
    value = _lookup(found, field.config.lstrip("/"), field.default)
    return tuple(value) if field.kind is tuple and value is not None else value


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
    for field, value in _flat_values(settings, fields_of(type(settings))):
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


def _flat_values(settings: Any, fields: list[_Field]):
    for field in fields:
        value = getattr(settings, field.name)
        if field.setting is None:
            yield from _flat_values(value, _members(field))
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


def config_defaults(cls: type) -> dict[str, Any]:
    """Each setting's default by its dotted config key: what the config schema's defaults must equal."""
    return _defaults_of(fields_of(cls), "")


def _defaults_of(fields: list[_Field], prefix: str) -> dict[str, Any]:
    defaults = {}
    for field in fields:
        if field.config is None:
            continue
        key = f"{prefix}.{field.config}".strip(".") if field.config else prefix
        if field.config.startswith("/"):
            key = field.config[1:]  # from the top entry, whatever the nesting
        if field.setting is None:
            defaults.update(_defaults_of(_members(field), key))
        else:
            defaults[key] = list(field.default) if field.kind is tuple else field.default
    return defaults
