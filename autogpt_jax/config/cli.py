"""The command line: ``--config_path FILE`` (YAML) plus dotted overrides, draccus style.

A YAML file overrides the defaults, and dotted flags (``--model.dtype bfloat16``) override the
file. Unknown keys, in the file or on the command line, fail before anything runs, with the
closest valid key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path
import typing
from typing import Any, Optional

import yaml

from autogpt_jax.config.schema import Config
from autogpt_jax.errors import ConfigError


def _field_types(cls=Config, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)  # resolved in the section's own module
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out.update(_field_types(t, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = t
    return out


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    return list(_field_types(cls, prefix))


def _quote_strings(argv: list[str]) -> list[str]:
    """Command-line values of string fields are taken literally: draccus reads values as YAML, in
    which a template such as "{text} It was {mask}." would be a mapping."""
    types = _field_types()
    out = list(argv)
    for i, a in enumerate(out):
        if not a.startswith("--") or "=" in a or i + 1 >= len(out):
            continue
        t = types.get(a[2:])
        if t in (str, Optional[str]) and out[i + 1] not in ("null", "None"):
            v = out[i + 1]
            if not (v.startswith("'") and v.endswith("'") and len(v) > 1):
                out[i + 1] = "'" + v.replace("'", "''") + "'"
    return out


def _unknown(key: str, where: str) -> ConfigError:
    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(keys)}"
    return ConfigError(f"unknown config key {key!r} {where}{hint}")


def _check_yaml_keys(node: Any, prefix: str, path: Path) -> list[str]:
    """The dotted keys a YAML file sets (an unknown one fails)."""
    if not isinstance(node, dict):
        return []
    keys = set(valid_keys())
    sections = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    sections |= {s.rsplit(".", 1)[0] for s in list(sections) if "." in s}
    found = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        if full in sections:
            found += _check_yaml_keys(v, full + ".", path)
        elif full not in keys:
            raise _unknown(full, f"in {path}")
        else:
            found.append(full)
    return found


def load_config(argv: list[str] | None = None) -> Config:
    """Parse ``--config_path FILE`` plus dotted overrides into a validated ``Config``."""
    import draccus

    argv = list(sys.argv[1:] if argv is None else argv)
    keys = set(valid_keys())
    config_path, given = None, []
    for i, a in enumerate(argv):
        if a.startswith("--"):
            key = a[2:].split("=", 1)[0]
            if key == "config_path":
                config_path = argv[i + 1] if "=" not in a and i + 1 < len(argv) else a.split("=", 1)[-1]
            elif key not in keys and key not in ("help", "h"):
                raise _unknown(key, "on the command line")
            else:
                given.append(key)
    if config_path is not None:
        p = Path(config_path)
        if not p.is_file():
            raise ConfigError(f"--config_path {config_path}: no such file")
        try:
            given = _check_yaml_keys(yaml.safe_load(p.read_text()) or {}, "", p) + given
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML ({e})") from None
    try:
        cfg = draccus.parse(Config, args=_quote_strings(argv))
        return dataclasses.replace(cfg, given=tuple(dict.fromkeys(given)))
    except Exception as e:
        # draccus wraps the errors of our __post_init__ checks; surface the original message.
        cause = e
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise ConfigError(str(cause)) from None
        if isinstance(e, (ValueError, TypeError, yaml.YAMLError)) or type(e).__name__ in ("DecodingError", "ParsingError"):
            raise ConfigError(f"invalid configuration: {e}") from None
        raise


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
