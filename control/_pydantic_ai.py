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
        from comptroller.control._pydantic_ai_model import GuardedPydanticAIModel
    except ImportError as exc:
        if not (exc.name or "").startswith("pydantic_ai"):
            raise
        raise ConfigError(
            "pydantic-ai is not installed: install the extra with "
            "`pip install 'comptroller[pydantic-ai]'` to use ControlPlane.pydantic_ai_model"
        ) from None
    return GuardedPydanticAIModel(chat_model)
