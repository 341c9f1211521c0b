"""A pydantic-ai `Model` over a guarded chat model (`ControlPlane.pydantic_ai_model`).

pydantic-ai is an optional extra: it is imported here, when a model is asked for, and never by
`import comptroller.control`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from comptroller.errors import ConfigError

if TYPE_CHECKING:
    from pydantic_ai.models import Model

    from comptroller.control._chat_model import GuardedChatModel


def guarded_pydantic_ai_model(chat_model: GuardedChatModel) -> Model:
    """A pydantic-ai `Model` whose every request runs `chat_model`'s guarded call flow.

    Args:
        chat_model: A handle of `ControlPlane.chat_model` (its purpose, domain, org, context).

    Raises:
        ConfigError: pydantic-ai is not installed.
    """
    try:
        # pydantic-ai on its own first: any failure to import it (not installed, blocked by
        # the environment) is the missing extra, whatever name its ImportError carries.
        import pydantic_ai  # noqa: F401
    except ImportError as exc:
        raise _missing_extra(exc) from exc
    try:
        from comptroller.control._pydantic_ai_model import GuardedPydanticAIModel
    except ImportError as exc:
        # A part of pydantic-ai our modules need is missing: an older or partial install.
        if "pydantic_ai" not in f"{exc.name} {exc}":
            raise
        raise _missing_extra(exc) from exc
    return GuardedPydanticAIModel(chat_model)


def _missing_extra(exc: ImportError) -> ConfigError:
    return ConfigError(
        f"pydantic-ai is not installed or cannot be imported ({exc}): install the extra with "
        "`pip install 'comptroller[pydantic-ai]'` to use ControlPlane.pydantic_ai_model"
    )
