"""The one place that adapts to the transformers versions stepcall allows (pyproject: >=5.17,<5.20).

vLLM 0.32 (its CPU and GPU builds) takes transformers ``>=5.16.1,<5.20``; the lent GPU machines
carry 5.17. Across releases ``Qwen2Model.forward`` has named its KV cache ``past_key_values``
(5.17-5.23) and ``cache`` (5.24+); an unknown keyword is swallowed by ``**kwargs``, so passing
the wrong name does not fail: every step then sees only its newest token. ``cache_keyword``
reads the name from the signature once, and ``run_decoder`` checks after every call that the
cache grew by the tokens it was given, so a cache the model ignored is an error, not a wrong
answer. Tests: ``tests/model/test_hf_compat.py`` (on the installed version and on 5.17).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers import Qwen2Model

#: Keyword names ``Qwen2Model.forward`` has used for the KV cache, newest first.
_CACHE_KEYWORDS = ("cache", "past_key_values")


class TransformersVersionError(RuntimeError):
    """The installed transformers does not offer an API stepcall's reference model needs."""


@functools.cache
def cache_keyword(model_cls: type = Qwen2Model) -> str:
    """The keyword ``model_cls.forward`` takes its KV cache under."""
    params = inspect.signature(model_cls.forward).parameters
    for name in _CACHE_KEYWORDS:
        if name in params:
            return name
    import transformers

    raise TransformersVersionError(
        f"{model_cls.__name__}.forward of transformers {transformers.__version__} takes its KV "
        f"cache under none of {_CACHE_KEYWORDS}; install a version in stepcall's range "
        "(pip install -e '.[model]')"
    )


def run_decoder(
    decoder: Qwen2Model,
    inputs_embeds: torch.Tensor,
    cache: Any,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``decoder(inputs_embeds, cache)`` → last hidden states ``[1, L, hidden]``; ``cache`` grows.

    Raises ``TransformersVersionError`` if the cache did not grow by ``L`` tokens (the decoder
    ignored it).
    """
    before = int(cache.get_seq_length())
    out = decoder(
        inputs_embeds=inputs_embeds,
        use_cache=True,
        position_ids=position_ids,
        **{cache_keyword(type(decoder)): cache},
    )
    grown = int(cache.get_seq_length()) - before
    if grown != int(inputs_embeds.shape[1]):
        import transformers

        raise TransformersVersionError(
            f"the KV cache grew by {grown} tokens for {int(inputs_embeds.shape[1])} inputs: "
            f"transformers {transformers.__version__} did not use the cache it was given"
        )
    return out.last_hidden_state


__all__ = ["TransformersVersionError", "cache_keyword", "run_decoder"]
