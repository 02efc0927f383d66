"""How a registered method runs in TRL and in verl: settings as data.

With what differs and what is checked. Every `policygrad.methods.Method` carries one
entry per framework in its `trl` and `verl` fields: a `Recipe` (the trainer and the
settings that reproduce the method there) or an `Unsupported` (why the framework cannot
express it, and the closest thing it has). `policygrad.methods.to_trl` and
`policygrad.methods.to_verl` hand the settings out, and
`policygrad.methods.frameworks_table` renders them for the book's appendix and the
README.

The settings were read off the frameworks' own source at the versions below
(`GRPOConfig` in `trl/trainer/grpo_config.py`; verl's `ppo_trainer.yaml`, `ActorConfig`
and `AlgoConfig`), and the parity tests in `tests/parity` run the frameworks' code on
the same inputs as the package's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "TRL_VERSION",
    "VERL_VERSION",
    "FRAMEWORKS",
    "VERL_KL_NAMES",
    "Recipe",
    "Unsupported",
]

#: The TRL and verl versions the recipes and parity tests were checked against (the
#: `parity` extra's pins).
TRL_VERSION = "1.16"
VERL_VERSION = "0.9"

#: Framework key -> (display name, version).
FRAMEWORKS = {"trl": ("TRL", TRL_VERSION), "verl": ("verl", VERL_VERSION)}

#: The package's KL estimator -> verl's `kl_loss_type` / `algorithm.kl_penalty` name.
VERL_KL_NAMES = {"k1": "k1", "k2": "k2", "k3": "low_var_kl", "k1+": "k1+", "k3+": "k3+"}

_SETTING = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def _check_framework(framework: object) -> str:
    if framework not in FRAMEWORKS:
        raise ValueError(
            f"framework must be one of {tuple(FRAMEWORKS)}, got {framework!r}"
        )
    return framework  # type: ignore[return-value]


def _check_texts(value: object, name: str) -> tuple[str, ...]:
    if (
        isinstance(value, str)
        or not isinstance(value, tuple)
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise ValueError(f"{name} must be a tuple of non-empty strings, got {value!r}")
    return value


@dataclass(frozen=True)
class Recipe:
    """The settings that run a method in one framework.

    framework: `"trl"` or `"verl"`; trainer: what to run (`"trl.GRPOTrainer"`,
    `"python -m verl.trainer.main_ppo"`); settings: for TRL the keyword arguments of the
    trainer's config class (`GRPOConfig`), for verl the Hydra keys (full dotted paths)
    and their values; differences: where the framework's run differs from the method on
    purpose (an epsilon, a clamp, a normaliser) — empty when it is the same
    computation; pitfalls: framework defaults a reader trips over when setting it up by
    hand; parity: the parity tests (`"tests/parity/file.py::test_name"`) that compare
    the framework's code with the package's for this method.
    """

    framework: str
    trainer: str
    settings: dict = field(default_factory=dict)
    differences: tuple[str, ...] = ()
    pitfalls: tuple[str, ...] = ()
    parity: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_framework(self.framework)
        if not isinstance(self.trainer, str) or not self.trainer:
            raise ValueError(
                f"trainer must be a non-empty string, got {self.trainer!r}"
            )
        if not isinstance(self.settings, dict):
            raise ValueError(
                f"settings must be a dict, got {type(self.settings).__name__}"
            )
        for key, value in self.settings.items():
            if not isinstance(key, str) or not _SETTING.fullmatch(key):
                raise ValueError(
                    f"setting names must be identifiers or dotted paths, got {key!r}"
                )
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise ValueError(
                    f"setting {key!r} must be None, a bool, a number or a string, "
                    f"got {value!r}"
                )
        for name in ("differences", "pitfalls", "parity"):
            _check_texts(getattr(self, name), name)

    @property
    def exact(self) -> bool:
        """Whether the framework runs the same computation (no listed difference)."""
        return not self.differences


@dataclass(frozen=True)
class Unsupported:
    """A framework that cannot express the method.

    Why, and the closest thing it offers (or None).
    """

    framework: str
    reason: str
    closest: str | None = None

    def __post_init__(self) -> None:
        _check_framework(self.framework)
        if not isinstance(self.reason, str) or not self.reason:
            raise ValueError(f"reason must be a non-empty string, got {self.reason!r}")
        if self.closest is not None and (
            not isinstance(self.closest, str) or not self.closest
        ):
            raise ValueError(
                f"closest must be a non-empty string or None, got {self.closest!r}"
            )
