"""The control plane's pricer is `comptroller.pricing`, shared with the collector and reprice.

Kept so that the control plane's own `comptroller.control._pricing` imports keep working.
"""

from __future__ import annotations

from comptroller.pricing import Price, Pricer, Usage

__all__ = ["Price", "Pricer", "Usage"]
