"""stepaudio2/hf_compat.py on the installed transformers (and, through test_transformers_range.py,
on the lowest allowed one): the KV cache keyword is read from the real ``Qwen2Model``, a decoder
that loses the cache is an error, and a decoder with no known cache keyword names the fix."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import transformers
from transformers import DynamicCache, Qwen2Config, Qwen2Model

from model_service.stepaudio2.hf_compat import TransformersVersionError, cache_keyword, run_decoder


def _config() -> Qwen2Config:
    return Qwen2Config(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )


def _decoder(cls: type[Qwen2Model]) -> Qwen2Model:
    torch.manual_seed(0)
    return cls(_config()).eval()


def _major_minor() -> tuple[int, int]:
    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


class CacheInKwargsQwen2(Qwen2Model):
    """Advertises ``cache`` (the 5.24+ name) and hands it on as ``cache=``; transformers < 5.24
    swallows that in ``Qwen2Model.forward``'s ``**kwargs`` (stepcall's bug under 5.19)."""

    def forward(  # type: ignore[override]
        self,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> Any:
        return super().forward(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            use_cache=use_cache,
            cache=cache,
            **kwargs,
        )


class NoCacheKeywordQwen2(Qwen2Model):
    """A forward that names neither ``cache`` nor ``past_key_values``."""

    def forward(  # type: ignore[override]
        self,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        return super().forward(
            inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=use_cache, **kwargs
        )


def test_cache_keyword_of_installed_qwen2() -> None:
    name = cache_keyword()
    assert name == cache_keyword(Qwen2Model)
    assert name in inspect.signature(Qwen2Model.forward).parameters
    # past_key_values through 5.23, cache from 5.24 (hf_compat's docstring)
    assert name == ("cache" if _major_minor() >= (5, 24) else "past_key_values")


def test_run_decoder_grows_cache_and_matches_full_pass() -> None:
    dec = _decoder(Qwen2Model)
    cfg = dec.config
    x = torch.randn(1, 9, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = dec(inputs_embeds=x, use_cache=False).last_hidden_state
        cache = DynamicCache(config=cfg)
        first = run_decoder(dec, x[:, :5], cache)
        assert cache.get_seq_length() == 5
        rest = [run_decoder(dec, x[:, i : i + 1], cache) for i in range(5, 9)]
        assert cache.get_seq_length() == 9
    stepped = torch.cat([first, *rest], dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)


def test_cache_swallowed_by_kwargs_is_an_error() -> None:
    if _major_minor() >= (5, 24):
        pytest.skip("transformers >= 5.24 takes cache=: nothing swallows it")
    dec = _decoder(CacheInKwargsQwen2)
    assert cache_keyword(CacheInKwargsQwen2) == "cache"
    cache = DynamicCache(config=dec.config)
    x = torch.randn(1, 4, dec.config.hidden_size)
    with torch.inference_mode():
        # the plain call runs: the lost cache shows only in its length
        dec(inputs_embeds=x, use_cache=True, cache=cache)
        assert cache.get_seq_length() == 0
        with pytest.raises(TransformersVersionError, match="grew by 0 tokens for 4 inputs"):
            run_decoder(dec, x, cache)


def test_no_cache_keyword_names_the_install_command() -> None:
    dec = _decoder(NoCacheKeywordQwen2)
    with pytest.raises(TransformersVersionError) as err:
        cache_keyword(NoCacheKeywordQwen2)
    msg = str(err.value)
    assert "NoCacheKeywordQwen2" in msg and transformers.__version__ in msg
    assert "pip install -e '.[model]'" in msg
    with pytest.raises(TransformersVersionError, match=r"pip install -e '\.\[model\]'"):
        run_decoder(dec, torch.zeros(1, 2, dec.config.hidden_size), DynamicCache(config=dec.config))
