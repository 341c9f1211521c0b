"""Configuration: one settings model from `comptroller.toml` and `COMPTROLLER_*` variables.

Example:
    >>> from comptroller.config import load_settings
    >>> settings = load_settings()  # doctest: +SKIP
    >>> settings.collector.port  # doctest: +SKIP
    4318
"""

from comptroller.config._alerts import AlertSettings, WebhookSettings
from comptroller.config._analytics import AnalyticsSettings
from comptroller.config._attribution import AttributionBudget
from comptroller.config._collector import CollectorSettings
from comptroller.config._control import ControlSettings
from comptroller.config._settings import (
    CONFIG_FILENAME,
    ENV_CONFIG,
    Settings,
    default_data_dir,
    find_config_file,
    load_settings,
    settings_field_docs,
)
from comptroller.config._tui import TuiSettings

__all__ = [
    "CONFIG_FILENAME",
    "ENV_CONFIG",
    "AlertSettings",
    "AnalyticsSettings",
    "AttributionBudget",
    "CollectorSettings",
    "ControlSettings",
    "Settings",
    "TuiSettings",
    "WebhookSettings",
    "default_data_dir",
    "find_config_file",
    "load_settings",
    "settings_field_docs",
]
