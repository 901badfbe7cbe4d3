"""twistd options that also read ``DISTPOTIFY_<OPTION>`` from the environment.

Both commands (``twistd distpotify`` and ``twistd distpotify-proxy``) list their options
as (name, default, help, converter); the command line wins over the environment, each value
is converted once, and a bad one stops the process with one line naming where it came from.
The replica's and the proxy's config checks share ConfigError and check_positive from here.
"""
# test-case-name: tests.unit.test_tap

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from twisted.python import usage

ENV_PREFIX = "DISTPOTIFY_"

# (option, default, help, converter to the config field)
OptionList = list[tuple[str, Any, str, Callable[[str], Any]]]


class ConfigError(ValueError):
    """A bad option value; its message is the one line the operator sees."""


def check_positive(name: str, value: float) -> None:
    """ConfigError unless ``value`` > 0 (so NaN, which compares false, is refused too)."""
    if not value > 0:
        raise ConfigError(f"--{name} must be positive, got {value}")


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


def parse_size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (binary units): 256K, 512M, 1G."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def parse_switch(text: str) -> bool:
    """``on`` or ``off`` (also yes/no, true/false, 1/0) as a bool."""
    value = text.strip().lower()
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise ConfigError(f"must be on or off, got {text!r}")


def env_parameters(options: OptionList) -> list[list[Any]]:
    """usage.Options.optParameters for ``options``, each help naming its variable."""
    return [[name, None, default, f"{text} (env {env_name(name)})"]
            for name, default, text, _ in options]


class EnvOptions(usage.Options):
    option_list: ClassVar[OptionList]
    required: ClassVar[str]  # the one option without a default
    required_hint: ClassVar[str] = ""  # what follows "--X is required (or DISTPOTIFY_X)"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._from_env: set[str] = set()
        environ = os.environ if environ is None else environ
        for name, *_ in self.option_list:
            if env_name(name) in environ:
                self[name] = environ[env_name(name)]
                self._from_env.add(name)

    def converted(self) -> dict[str, Any]:
        """Every given option, converted, by config field name; UsageError on a bad one."""
        if not self[self.required]:
            raise usage.UsageError(
                f"--{self.required} is required (or {env_name(self.required)})"
                + self.required_hint)
        values: dict[str, Any] = {}
        for name, _, _, convert in self.option_list:
            raw = self[name]
            if raw is None:
                continue
            try:
                values[name.replace("-", "_")] = convert(raw)
            except ValueError as e:
                source = env_name(name) if name in self._from_env else f"--{name}"
                # a converter's ConfigError already says what is wrong; int() and float() do not
                detail = str(e) if isinstance(e, ConfigError) else f"got {raw!r}"
                raise usage.UsageError(f"bad value for {source}: {detail}") from None
        return values
