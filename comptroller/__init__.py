"""comptroller — run LLM calls under control and see what they cost.

The root package is deliberately light: it holds the version, the error hierarchy, the
configuration model and the telemetry names shared by every part. The parts live in
subpackages that import only what they need:

- `comptroller.control` — the in-process control plane around LangChain chat models.
- `comptroller.collector` — OTLP receiver and embedded sink that land telemetry in DuckDB.
- `comptroller.analytics` — DuckDB schema, rollups, budget state, queries, CI gate, reports.
- `comptroller.dashboards` — declarative panels shared by the TUI, CLI and CI reports.
- `comptroller.tui` — the Textual dashboard for ops staff.
"""

from importlib.metadata import PackageNotFoundError, version

from comptroller.errors import ComptrollerError, ConfigError

try:
    __version__ = version("comptroller")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["ComptrollerError", "ConfigError", "__version__"]
