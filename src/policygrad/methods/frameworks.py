"""From a registered method to TRL and verl: the settings as data, and the table.

`to_trl` gives the keyword arguments of `trl.GRPOConfig` that run a method in TRL's
`GRPOTrainer`; `to_verl` the Hydra overrides of `python -m verl.trainer.main_ppo`. A
method a framework cannot express raises a ValueError that says why. `frameworks_table`
renders every registered method's entries (the table the appendix "From policygrad to
TRL and verl" and the README show) and `framework_details` one method's settings in
full.
"""

from __future__ import annotations

from .base import METHODS, Method, framework_name, get_method
from .recipes import FRAMEWORKS, Recipe, Unsupported

__all__ = [
    "recipe",
    "to_trl",
    "to_verl",
    "hydra_value",
    "frameworks_table",
    "framework_details",
]


def recipe(method: str | Method, framework: str) -> Recipe | Unsupported:
    """The method's entry for `framework` (`"trl"` or `"verl"`).

    A Recipe or an Unsupported.
    """
    m = get_method(method)
    if framework not in FRAMEWORKS:
        raise ValueError(
            f"framework must be one of {tuple(FRAMEWORKS)}, got {framework!r}"
        )
    entry = getattr(m, framework)
    if entry is None:
        raise ValueError(
            f"method {m.name!r} has no {FRAMEWORKS[framework][0]} entry "
            "(trl=/verl= of its Method)"
        )
    return entry


def _settings(method: str | Method, framework: str) -> dict:
    entry = recipe(method, framework)
    if isinstance(entry, Unsupported):
        name, version = FRAMEWORKS[framework]
        closest = f" (closest: {entry.closest})" if entry.closest else ""
        what = f"{get_method(method).name!r} cannot be expressed in {name} {version}"
        raise ValueError(f"{what}: {entry.reason}{closest}")
    return dict(entry.settings)


def to_trl(method: str | Method) -> dict:
    """The keyword arguments of `trl.GRPOConfig` (TRL 1.16) that run `method`.

    They run it in `GRPOTrainer`. Add your own run settings (`output_dir`, batch size,
    learning rate, `max_completion_length`) and pass them on:
    `GRPOConfig(output_dir="out", **to_trl("grpo"))` (on a CPU-only machine also
    `use_cpu=True, bf16=False`: TRL turns bf16 on by default). Where TRL's
    computation differs from the package's on purpose,
    `recipe(method, "trl").differences` says how.
    ValueError if TRL cannot express the method (the message says why).
    """
    return _settings(method, "trl")


def hydra_value(value: object) -> str:
    """A setting's value as a Hydra command-line override writes it.

    `True` -> `true`, None -> `null`.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(f"cannot write {value!r} as a Hydra value")


def to_verl(method: str | Method) -> list[str]:
    """The Hydra overrides (verl 0.9) that run `method`.

    With `python -m verl.trainer.main_ppo`: `["algorithm.adv_estimator=grpo", ...]`; add
    the data, model and batch-size overrides of your run. ValueError if verl cannot
    express the method (the message says why).
    """
    return [
        f"{key}={hydra_value(value)}"
        for key, value in _settings(method, "verl").items()
    ]


def frameworks_table(methods: list[str] | None = None) -> str:
    """A Markdown table: one row per method and its TRL and verl entries.

    The rows: `methods` (default: every registered one). Each cell names the trainer and
    its key setting and whether a parity test checks it, or "—" where the framework
    cannot express the method. The book's appendix and the README show this table;
    `framework_details` gives one method's full settings.
    """
    names = list(METHODS) if methods is None else methods
    header = (
        "| method | " + " | ".join(f"{n} {v}" for n, v in FRAMEWORKS.values()) + " |"
    )
    out = [header, "|---|---|---|"]
    for m in (get_method(n) for n in names):
        cells = []
        for fw in FRAMEWORKS:
            entry = getattr(m, fw)
            if isinstance(entry, Recipe):
                cells.append(
                    f"`{framework_name(entry)}`, "
                    f"{'checked' if entry.parity else 'not checked'}"
                )
            else:
                cells.append("—")
        out.append(f"| `{m.name}` | " + " | ".join(cells) + " |")
    return "\n".join(out)


def framework_details(method: str | Method) -> str:
    """Markdown for one method.

    Per framework: its settings, differences, pitfalls and the tests that check it.
    """
    m = get_method(method)
    out = [f"**`{m.name}`** — {m.title}", ""]
    for fw, (name, version) in FRAMEWORKS.items():
        entry = getattr(m, fw)
        if entry is None:
            out += [f"*{name} {version}*: no entry.", ""]
            continue
        if isinstance(entry, Unsupported):
            closest = f" Closest: {entry.closest}." if entry.closest else ""
            out += [
                f"*{name} {version}*: not expressible — {entry.reason}.{closest}",
                "",
            ]
            continue
        out += [f"*{name} {version}*: `{entry.trainer}` with", "", "```"]
        if fw == "trl":
            out += [f"{k}={v!r}," for k, v in entry.settings.items()]
        else:
            out += [f"{k}={hydra_value(v)}" for k, v in entry.settings.items()]
        out += ["```", ""]
        if entry.differences:
            out += (
                ["Differs from the package on purpose:", ""]
                + [f"- {d}" for d in entry.differences]
                + [""]
            )
        else:
            out += ["The same computation as the package.", ""]
        if entry.pitfalls:
            out += ["Pitfalls:", ""] + [f"- {p}" for p in entry.pitfalls] + [""]
        tests = ", ".join(f"`{t.rsplit('::', 1)[-1]}`" for t in entry.parity)
        out += [
            f"Checked against {name} {version} by {tests}."
            if entry.parity
            else "Not checked by a test.",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"
