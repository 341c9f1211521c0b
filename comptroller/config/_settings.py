from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from comptroller.config._alerts import AlertSettings
from comptroller.config._analytics import AnalyticsSettings
from comptroller.config._collector import CollectorSettings, is_postgres_url, redacted_url
from comptroller.config._control import ControlSettings
from comptroller.config._tui import TuiSettings
from comptroller.errors import ConfigError

ENV_PREFIX = "COMPTROLLER_"
ENV_CONFIG = "COMPTROLLER_CONFIG"
"""Path of the configuration file; overrides the search for `comptroller.toml`."""
CONFIG_FILENAME = "comptroller.toml"
PROJECT_DATA_DIRNAME = ".comptroller"
_SECTIONS = (ControlSettings, CollectorSettings, AnalyticsSettings, TuiSettings, AlertSettings)


class Settings(BaseSettings):
    """Every setting of comptroller, in one model.

    Precedence, in one place: explicit argument > `COMPTROLLER_*` environment > the
    configuration file (`comptroller.toml`) > the default. Top-level settings map to
    `COMPTROLLER_<NAME>`; a section's to `COMPTROLLER_<SECTION>_<NAME>` (e.g.
    `COMPTROLLER_COLLECTOR_PORT`) and to `[section] name = …` in the file.

    Example:
        >>> settings = load_settings(data_dir="/tmp/ct")  # doctest: +SKIP
        >>> settings.db_file  # doctest: +SKIP
        PosixPath('/tmp/ct/comptroller.duckdb')
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
        # No use_attribute_docstrings (here or in the sections): pydantic would parse every
        # class's source on each start (~40 ms of every command); only the docs read them,
        # through settings_field_docs().
    )

    data_dir: Path = Field(default_factory=lambda: default_data_dir())
    """Directory for the DuckDB file, the SQLite profile store, the spool and the key file.
    Default: `./.comptroller` next to a `comptroller.toml` found in this directory or a
    parent, else the platform's user data directory."""
    db: Path | str | None = None
    """The ledger: a DuckDB file (default: `comptroller.duckdb` in the data directory), or
    a PostgreSQL URL (`postgresql://user@host:5432/db`) that any number of collectors
    (`comptroller collect`, each with its own `collector.collector_id`) land into."""
    timezone: str = "UTC"
    """Time zone of the budget day and of daily rollups (IANA name, e.g. `Europe/Paris`)."""
    telemetry: Literal["embedded", "otlp", "none"] = "embedded"
    """Where the control plane sends spans and usage rows: the embedded DuckDB sink, an OTLP
    collector (`otlp_endpoint`), or nowhere."""
    otlp_endpoint: str | None = Field(
        default_factory=lambda: os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    """Base URL of the OTLP/HTTP collector. Default: `OTEL_EXPORTER_OTLP_ENDPOINT`, else
    `http://127.0.0.1:4318` when `telemetry = "otlp"`."""
    record_content: bool = False
    """Record prompt and completion content on spans. Off unless explicitly enabled."""
    environment: str | None = Field(default_factory=lambda: otel_environment())
    """The deployment environment (`development`, `staging`, `production`, …). Default:
    OpenTelemetry's `deployment.environment.name` in `OTEL_RESOURCE_ATTRIBUTES`, else unset.
    `development`, `dev` or `local` is local development, where OAuth credentials are allowed
    unless `control.allow_oauth_credentials = false`."""
    model: dict[str, str] = Field(default_factory=dict)
    """Server-level default model per purpose, `provider:model` (e.g.
    `COMPTROLLER_MODEL_REASONING=openai:gpt-4o`); a purpose no scope sets inherits it."""
    control: ControlSettings = Field(default_factory=ControlSettings)
    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    tui: TuiSettings = Field(default_factory=TuiSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as 'UTC')"
            ) from None
        return value

    @field_validator("model")
    @classmethod
    def _provider_model_pairs(cls, value: dict[str, str]) -> dict[str, str]:
        for purpose, ref in value.items():
            provider, sep, model = ref.partition(":")
            if not sep or not provider or not model:
                raise ValueError(
                    f"model for purpose {purpose!r} must be 'provider:model', got {ref!r}"
                )
        return {purpose.lower(): ref for purpose, ref in value.items()}

    @field_validator("db", mode="before")
    @classmethod
    def _file_or_url(cls, value: Any) -> Any:
        # A PostgreSQL URL stays text (as a path its `//` would collapse); the rest is a path.
        if isinstance(value, str) and not is_postgres_url(value):
            return Path(value)
        return value

    @property
    def local_development(self) -> bool:
        """Whether `environment` names a developer's own machine."""
        return (self.environment or "").strip().lower() in LOCAL_ENVIRONMENTS

    @property
    def oauth_allowed(self) -> bool:
        """Whether OAuth credentials may be set and used: `control.allow_oauth_credentials`
        when given, else only in local development."""
        allowed = self.control.allow_oauth_credentials
        return self.local_development if allowed is None else allowed

    @property
    def db_url(self) -> str | None:
        """The PostgreSQL ledger's URL when `db` names one (None: a DuckDB file)."""
        return self.db if isinstance(self.db, str) else None

    @property
    def db_file(self) -> Path:
        """The DuckDB file that analytics reads and the embedded sink writes.

        Raises:
            ConfigError: `db` names a PostgreSQL ledger (see `db_url`).
        """
        if isinstance(self.db, str):
            raise ConfigError(
                f"db is a PostgreSQL ledger ({redacted_url(self.db)}), and this needs a DuckDB "
                "file: land into PostgreSQL with `comptroller collect` (a control plane "
                'sends to it with telemetry = "otlp"), or set db to a DuckDB file'
            )
        return self.db if self.db is not None else self.data_dir / "comptroller.duckdb"

    @property
    def profile_store_url(self) -> str:
        """SQLAlchemy URL of the profile store (a SQLite file in the data dir by default)."""
        return self.control.profile_store_url or f"sqlite:///{self.data_dir / 'profiles.sqlite'}"

    @property
    def master_key_file(self) -> Path:
        """File holding the credentials master key."""
        if self.control.master_key_file:
            return Path(self.control.master_key_file)
        return self.data_dir / "master.key"

    def ensure_data_dir(self) -> Path:
        """Create the data directory (mode 0700) if needed and check it is writable.

        An existing directory that group or others may enter is tightened to its owner
        alone, with a warning in the log.

        Raises:
            ConfigError: The directory cannot be created or written, naming it and what to do.
        """
        from comptroller._private import private_dir

        path = self.data_dir
        try:
            # It holds billing data and secrets: private to this user (0700, tightened).
            private_dir(path)
            probe = path / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"data directory {path} is not usable ({exc.strerror or exc}); "
                "set COMPTROLLER_DATA_DIR or data_dir in comptroller.toml to a writable directory"
            ) from exc
        return path

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_data = _FILE_DATA.get("data", {})
        return (init_settings, env_settings, InitSettingsSource(settings_cls, file_data))


# The file source is handed to pydantic-settings through this slot because its sources are
# class-level; `load_settings` fills and clears it around construction.
_FILE_DATA: dict[str, dict[str, Any]] = {}


def find_config_file(start: Path | None = None) -> Path | None:
    """The configuration file in force: `COMPTROLLER_CONFIG`, else the nearest
    `comptroller.toml` in `start` (default: the working directory) or a parent."""
    explicit = os.environ.get(ENV_CONFIG)
    if explicit:
        return Path(explicit)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILENAME
        if candidate.is_file():
            return candidate
    return None


def default_data_dir(start: Path | None = None) -> Path:
    """`.comptroller` beside the project's `comptroller.toml`, else the platform data dir."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILENAME).is_file():
            return folder / PROJECT_DATA_DIRNAME
    return Path(platformdirs.user_data_dir("comptroller", appauthor=False))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "_".join(str(part) for part in loc).upper()


def _describe(exc: ValidationError, path: Path | None, file_data: dict[str, Any]) -> str:
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    key = ".".join(str(part) for part in loc)
    env = _env_name(loc)
    set_vars = sorted(
        name.upper()
        for name in os.environ
        if name.upper() == env or name.upper().startswith(env + "_")
    )
    if set_vars:
        where = "environment variable " + ", ".join(set_vars)
    elif path is not None and _in_file(file_data, loc):
        where = str(path)
    else:
        where = str(path) if path is not None else "settings"
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown setting (see docs/CONFIGURATION.md for the valid keys)"
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) else ""
    return f"{where}: {key}: {message}{shown}"


def _describe_env_json(exc: SettingsError) -> str:
    """One line for a variable pydantic-settings could not decode: a structured setting
    (a table, a list) takes JSON in the environment."""
    import json
    import re

    found = re.search(r'field "(\w+)"', str(exc))
    field = found.group(1) if found else ""
    env = _env_name((field,)) if field else ENV_PREFIX
    suspects = []
    for name, value in os.environ.items():
        upper = name.upper()
        if not (upper == env or upper.startswith(env + "_")) or not _structured(upper):
            continue
        try:
            json.loads(value)
        except ValueError:
            suspects.append(upper)
    where = "environment variable " + ", ".join(sorted(suspects)) if suspects else "environment"
    detail = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
    return (
        f"{where}: not valid JSON{detail}; a table or list setting takes JSON in the "
        """environment, e.g. '{"key": "value"}' or '["a", "b"]'"""
    )


def _structured(env: str) -> bool:
    """Whether the setting of variable `env` is a section, a table or a list (JSON)."""
    for name, field in Settings.model_fields.items():
        if env == _env_name((name,)):
            return _is_structured(field.annotation)
    return any(
        env == variable and _is_structured(f.annotation) for _, variable, f in settings_field_docs()
    )


def _is_structured(annotation: Any) -> bool:
    from typing import get_args, get_origin

    from pydantic import BaseModel

    kinds = [annotation, *get_args(annotation)]
    return any(
        get_origin(kind) in (dict, list, tuple, set, frozenset)
        or (isinstance(kind, type) and issubclass(kind, BaseModel | dict | list | tuple))
        for kind in kinds
    )


def _in_file(data: dict[str, Any], loc: tuple[int | str, ...]) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Load the settings: explicit `overrides` > environment > file > defaults.

    Args:
        config_file: The TOML file to read. Default: `find_config_file()`; a file named
            explicitly (here or by `COMPTROLLER_CONFIG`) must exist.
        **overrides: Values that win over everything, e.g. `data_dir=Path("/tmp/x")`.

    Raises:
        ConfigError: One line naming the file or variable, the key and the problem.
    """
    path = Path(config_file) if config_file is not None else find_config_file()
    file_data = _read_toml(path) if path is not None else {}
    if path is not None and "data_dir" in file_data:
        # A relative data_dir in a file means relative to that file, not to the cwd.
        file_data["data_dir"] = str((path.parent / str(file_data["data_dir"])).resolve())
    clean = {key: value for key, value in overrides.items() if value is not None}
    _FILE_DATA["data"] = file_data
    try:
        return Settings(**clean)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, file_data)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_env_json(exc)) from None
    finally:
        _FILE_DATA.pop("data", None)


def settings_field_docs() -> list[tuple[str, str, FieldInfo]]:
    """(key, environment variable, field) for every setting, for docs and `--help`; each
    field's `description` is the docstring written under it."""
    out: list[tuple[str, str, FieldInfo]] = []
    docs = _attribute_docstrings(Settings)
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _SECTIONS):
            section_docs = _attribute_docstrings(annotation)
            for sub, subfield in annotation.model_fields.items():
                key = f"{name}.{sub}"
                out.append((key, _env_name((name, sub)), _described(subfield, section_docs, sub)))
        else:
            out.append((name, _env_name((name,)), _described(field, docs, name)))
    return out


def _described(field: FieldInfo, docs: dict[str, str], name: str) -> FieldInfo:
    if field.description is not None or name not in docs:
        return field
    described = copy.copy(field)  # the model's own field stays as it is
    described.description = docs[name]
    return described


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """The string literal under each annotated attribute in the body of `cls`."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    for node, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


LOCAL_ENVIRONMENTS = frozenset({"development", "dev", "local"})
"""Values of `environment` that mean a developer's own machine."""


def otel_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """`deployment.environment.name` (or the older `deployment.environment`) of
    `OTEL_RESOURCE_ATTRIBUTES` (`key=value,key=value`, values percent-encoded), if set."""
    from urllib.parse import unquote

    raw = (os.environ if environ is None else environ).get("OTEL_RESOURCE_ATTRIBUTES", "")
    found: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep:
            found[key.strip()] = unquote(value.strip())
    return found.get("deployment.environment.name") or found.get("deployment.environment") or None
