"""Loading panel files: every well-formed file becomes a Panel, every bad one a PanelError."""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, cast

from comptroller.dashboards._panel import (
    BUILTIN_PARAMS,
    DISPLAYS,
    PARAM_TYPES,
    VIEWS,
    Clock,
    Panel,
    Param,
    coerce,
    sql_parameters,
)
from comptroller.errors import UsageError

_PANEL_KEYS = {
    "name",
    "title",
    "view",
    "display",
    "sql",
    "description",
    "order",
    "params",
    "options",
}
_PARAM_KEYS = {"type", "default", "required", "description", "choices"}
_SCALARS = (str, int, float, bool)


@dataclass(frozen=True, kw_only=True)
class PanelError:
    """A panel file that could not be loaded: where, and what is wrong with it."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(kw_only=True)
class PanelSet:
    """The panels that loaded, by name, and the files that did not.

    Example:
        >>> panels = load_panels()
        >>> panels["budget_state"].display
        'table'
    """

    panels: dict[str, Panel] = field(default_factory=dict)
    errors: list[PanelError] = field(default_factory=list)

    def __getitem__(self, name: str) -> Panel:
        try:
            return self.panels[name]
        except KeyError:
            raise UsageError(
                f"no panel named {name!r} (known: {', '.join(sorted(self.panels))})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.panels

    def __iter__(self) -> Iterator[Panel]:
        return iter(sorted(self.panels.values(), key=lambda p: (p.view, p.order, p.name)))

    def __len__(self) -> int:
        return len(self.panels)

    def for_view(self, view: str) -> list[Panel]:
        """The panels of one TUI view, in display order."""
        return [panel for panel in self if panel.view == view]


def builtin_panels_dir() -> Traversable:
    """The folder of the panels that ship with comptroller."""
    return resources.files("comptroller.dashboards.panels")


def load_panels(extra_dirs: Iterable[Path | str] = ()) -> PanelSet:
    """Load the built-in panels, then every `*.toml` in `extra_dirs` (in order).

    A later file with the same panel name replaces the earlier one, so a user can both add
    panels and override shipped ones. A file that fails to parse or validate is reported in
    `PanelSet.errors` with its path and problem; the others still load.
    """
    found = PanelSet()
    sources: list[Traversable | Path] = [builtin_panels_dir()]
    for extra in extra_dirs:
        extra_dir = Path(extra)
        if not extra_dir.is_dir():
            found.errors.append(PanelError(path=str(extra_dir), problem="not a directory"))
            continue
        sources.append(extra_dir)
    for source in sources:
        files = sorted(
            (f for f in source.iterdir() if f.name.endswith(".toml") and f.is_file()),
            key=lambda f: f.name,
        )
        for file in files:
            path = str(file)
            try:
                panel = _parse(file.read_text(encoding="utf-8"), path=path, stem=file.name[:-5])
            except (OSError, UnicodeDecodeError) as exc:
                found.errors.append(PanelError(path=path, problem=f"cannot read: {exc}"))
                continue
            except _Invalid as exc:
                found.errors.append(PanelError(path=path, problem=str(exc)))
                continue
            found.panels[panel.name] = panel
    return found


class _Invalid(Exception):
    pass


def parse_panel(text: str, *, path: str = "<panel>", stem: str = "panel") -> Panel:
    """Parse and validate one panel file's text.

    Raises:
        UsageError: The text is not a valid panel; the message names the problem.
    """
    try:
        return _parse(text, path=path, stem=stem)
    except _Invalid as exc:
        raise UsageError(f"{path}: {exc}") from None


def _parse(text: str, *, path: str, stem: str) -> Panel:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _Invalid(f"invalid TOML: {exc}") from None
    unknown = sorted(set(data) - _PANEL_KEYS)
    if unknown:
        raise _Invalid(
            f"unknown key {', '.join(unknown)} (valid: {', '.join(sorted(_PANEL_KEYS))})"
        )
    name = _text(data, "name", default=stem)
    if not name.isidentifier():
        raise _Invalid(f"name {name!r} must be letters, digits and underscores")
    title = _text(data, "title")
    sql = _text(data, "sql").strip()
    if not sql:
        raise _Invalid("sql is empty")
    view = _text(data, "view")
    if view not in VIEWS:
        raise _Invalid(f"view {view!r} is not one of {', '.join(VIEWS)}")
    display = _text(data, "display", default="table")
    if display not in DISPLAYS:
        raise _Invalid(f"display {display!r} is not one of {', '.join(DISPLAYS)}")
    order = data.get("order", 100)
    if not isinstance(order, int) or isinstance(order, bool):
        raise _Invalid(f"order must be an integer, got {order!r}")
    options = data.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(v, _SCALARS) for v in options.values()):
        raise _Invalid("[options] must map names to strings, numbers or booleans")
    params = _params(data.get("params", {}))
    declared = {p.name for p in params}
    clash = sorted(declared & set(BUILTIN_PARAMS))
    if clash:
        raise _Invalid(f"parameter {', '.join(clash)} is built in; do not declare it")
    undeclared = sorted(sql_parameters(sql) - declared - set(BUILTIN_PARAMS))
    if undeclared:
        raise _Invalid(
            f"sql uses ${', $'.join(undeclared)} but [params] does not declare "
            f"{'it' if len(undeclared) == 1 else 'them'} (built in: {', '.join(BUILTIN_PARAMS)})"
        )
    return Panel(
        name=name,
        title=title,
        view=cast(Any, view),
        sql=sql,
        params=params,
        display=cast(Any, display),
        description=_text(data, "description", default="").strip(),
        order=order,
        options=dict(options),
        source=path,
    )


def _text(data: Mapping[str, object], key: str, *, default: str | None = None) -> str:
    value = data.get(key, default)
    if value is None:
        raise _Invalid(f"missing required key {key!r}")
    if not isinstance(value, str):
        raise _Invalid(f"{key} must be a string, got {type(value).__name__}")
    return value


def _params(raw: object) -> tuple[Param, ...]:
    if not isinstance(raw, dict):
        raise _Invalid("[params] must be a table of [params.<name>] tables")
    # Defaults are checked against a fixed instant: only their form matters here.
    clock = Clock.at(dt.datetime(2000, 1, 1, tzinfo=dt.UTC), "UTC")
    out: list[Param] = []
    for name, spec in raw.items():
        if not name.isidentifier():
            raise _Invalid(f"parameter name {name!r} must be letters, digits and underscores")
        if not isinstance(spec, dict):
            raise _Invalid(f"[params.{name}] must be a table")
        unknown = sorted(set(spec) - _PARAM_KEYS)
        if unknown:
            raise _Invalid(f"[params.{name}]: unknown key {', '.join(unknown)}")
        kind = spec.get("type", "string")
        if kind not in PARAM_TYPES:
            raise _Invalid(f"[params.{name}]: type {kind!r} is not one of {', '.join(PARAM_TYPES)}")
        default = spec.get("default")
        if default is not None and not isinstance(default, (*_SCALARS, dt.date, dt.datetime)):
            raise _Invalid(f"[params.{name}]: default must be a scalar")
        choices = spec.get("choices", [])
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise _Invalid(f"[params.{name}]: choices must be a list of strings")
        required = spec.get("required", False)
        if not isinstance(required, bool):
            raise _Invalid(f"[params.{name}]: required must be true or false")
        param = Param(
            name=name,
            type=kind,
            default=default,
            required=required,
            description=str(spec.get("description", "")),
            choices=tuple(choices),
        )
        try:
            coerce(param, default, clock)
        except UsageError as exc:
            raise _Invalid(f"[params.{name}]: bad default: {exc}") from None
        out.append(param)
    return tuple(out)
