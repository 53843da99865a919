"""Load a YAML config, apply `--set key.sub=value` overrides, validate the whole thing once.

Every problem becomes a `ConfigError` whose message is one line naming the key and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.config.root import OpenAIMConfig
from shared.errors import ConfigError
from shared.names import unknown_name

# The shipped configs (configs/*.yaml in a checkout) are package data: shared/config/defaults links to
# configs/, and the wheel carries the files, so an installed openaim finds them without a checkout.
SHIPPED_CONFIGS = resources.files("shared.config") / "defaults"
DEFAULT_CONFIG = SHIPPED_CONFIGS / "demo.yaml"


def shipped_config(path: Path) -> Traversable | None:
    """``configs/<name>.yaml`` as the docs spell it, when no such file is here (e.g. an installed openaim
    run from another folder): the shipped config of that name, else None."""
    if path.exists() or path.parent != Path("configs"):
        return None
    shipped = SHIPPED_CONFIGS / path.name
    return shipped if shipped.is_file() else None


def _read_yaml(path: Path | Traversable) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.optim.lr=3e-4' -> (['training', 'optim', 'lr'], 0.0003). Values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _format_validation_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(config)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "literal_error":  # a value that names one of a fixed set: say which are close
        msg = unknown_name("value", err["input"], re.findall(r"'([^']*)'", err["ctx"]["expected"]))
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"invalid config: {key}: {msg}{extra}"


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> OpenAIMConfig:
    """Read, override and validate. Returns an `OpenAIMConfig`; raises `ConfigError` (one line)."""
    data = _read_yaml((shipped_config(Path(path)) or Path(path)) if path else DEFAULT_CONFIG)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    try:
        return OpenAIMConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
