"""Step-Audio 2 as an out-of-tree vLLM model (imported by vLLM through our plugin).

``StepAudio2ForCausalLM`` = our Whisper-style ``AudioEncoder`` + ``Adapter`` (the same plain
torch modules the reference model uses) + vLLM's ``Qwen2ForCausalLM`` as ``language_model``.
Shapes come from the checkpoint's config (``StepAudio2HFConfig``). Audio features replace the
embeddings at the ``<audio_patch>`` positions vLLM marks for each audio item.

Audio input: a request carries one ``<audio_patch>`` per audio chunk and the chunks' log-mels in
``multi_modal_data={"audio": {"audio_mels": [mel [128, T], ...]}}`` (see ``audio_inputs``). The
processor expands each patch to ``audio_token_count(T)`` patches; no Hugging Face processor is
involved. Weights: the official names, mapped by ``weights.vllm_weight_name`` in
``load_weights``, which raises when any parameter stays unfilled.

Requires vllm (tested against the 0.33 API); everything it computes that does not need vllm
lives in ``audio_inputs`` / ``weights`` / ``hf_config`` and is tested on CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ModalityDataItems, MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.sequence import IntermediateTensors

from model_service.stepaudio2.adapter import Adapter
from model_service.stepaudio2.encoder import AudioEncoder
from model_service.stepaudio2.mel import MAX_MEL_FRAMES, N_MELS, audio_token_count
from model_service.vllm_plugin.audio_inputs import (
    MELS_FIELD,
    encode_mels,
    parse_audio_items,
    split_batched,
)
from model_service.vllm_plugin.hf_config import StepAudio2HFConfig
from model_service.vllm_plugin.weights import (
    WeightNameError,
    is_ignored,
    missing_params,
    vllm_weight_name,
)

try:  # module paths of vLLM's model helpers
    from vllm.model_executor.models.interfaces import (
        MultiModalEmbeddings,
        SupportsMultiModal,
        SupportsPP,
    )
    from vllm.model_executor.models.utils import (
        AutoWeightsLoader,
        init_vllm_registered_model,
        maybe_prefix,
    )
except ImportError as e:  # pragma: no cover - only with an incompatible vllm
    raise ImportError(
        f"this vllm version lacks the multimodal model interfaces we need: {e}"
    ) from e

AUDIO_START, AUDIO_PATCH, AUDIO_END = "<audio_start>", "<audio_patch>", "<audio_end>"
DEFAULT_PATCH_ID = 151690


# ------------------------------------------------------------------------------ input parsing
class MelItems(ModalityDataItems[list[torch.Tensor], torch.Tensor]):
    """The audio items of one request: log-mel chunks, handed to the model unchanged."""

    def __init__(self, mels: list[torch.Tensor]) -> None:
        super().__init__(mels, "audio")

    def get_count(self) -> int:
        return len(self.data)

    def get(self, index: int) -> torch.Tensor:
        return self.data[index]

    def get_processor_data(self) -> Mapping[str, object]:
        return {}  # nothing for a Hugging Face processor: the mels are final

    def get_passthrough_data(self) -> Mapping[str, object]:
        return {MELS_FIELD: list(self.data)}


class StepAudio2DataParser(MultiModalDataParser):
    """Audio data = log-mel chunks (``audio_inputs.parse_audio_items``)."""

    def _parse_audio_data(self, data: Any) -> ModalityDataItems[Any, Any] | None:
        if data is None:
            return None
        return MelItems(parse_audio_items(data))


class StepAudio2ProcessingInfo(BaseProcessingInfo):
    """Limits and token ids for the Step-Audio 2 processor."""

    def get_hf_config(self) -> StepAudio2HFConfig:
        return self.ctx.get_hf_config(StepAudio2HFConfig)

    def get_hf_processor(self, **kwargs: object) -> Any:
        raise ValueError(
            "Step-Audio 2 has no Hugging Face processor: send log-mel chunks as "
            f'multi_modal_data={{"audio": {{"{MELS_FIELD}": [...]}}}}'
        )

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"text_kwargs": set(), "audio_kwargs": set()}

    def get_data_parser(self) -> MultiModalDataParser:
        return StepAudio2DataParser()

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int] | None = None
    ) -> Mapping[str, int]:
        return {"audio": audio_token_count(MAX_MEL_FRAMES)}

    def patch_id(self) -> int:
        tok = self.ctx.tokenizer
        if tok is not None:
            tid = tok.convert_tokens_to_ids(AUDIO_PATCH)
            if isinstance(tid, int) and tid >= 0:
                return tid
        return DEFAULT_PATCH_ID


class StepAudio2DummyInputs(BaseDummyInputsBuilder[StepAudio2ProcessingInfo]):
    """Worst-case inputs for vLLM's memory profiling: 30 s chunks."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return (AUDIO_START + AUDIO_PATCH + AUDIO_END) * mm_counts.get("audio", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None
    ) -> dict[str, Any]:
        n = mm_counts.get("audio", 0)
        if n <= 0:
            return {}
        return {"audio": {MELS_FIELD: [torch.zeros(N_MELS, MAX_MEL_FRAMES) for _ in range(n)]}}


class StepAudio2Processor(BaseMultiModalProcessor[StepAudio2ProcessingInfo]):
    """Expands each ``<audio_patch>`` to its chunk's patch count; passes the mels through."""

    def _get_mm_fields_config(
        self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {MELS_FIELD: MultiModalFieldConfig.batched("audio")}

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> Any:
        raise ValueError("Step-Audio 2 audio must arrive as log-mels; no HF processor runs")

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        patch = self.info.patch_id()

        def frames(item_idx: int) -> int:
            items = mm_items.get("audio")
            if isinstance(items, MelItems):
                return int(items.get(item_idx).shape[-1])
            cached = out_mm_kwargs["audio"][item_idx]
            if cached is None:
                raise ValueError(f"audio item {item_idx}: no mel to size its placeholder")
            return int(cached.get_data()[MELS_FIELD].shape[-1])

        def replacement(item_idx: int) -> PromptUpdateDetails:
            n = audio_token_count(frames(item_idx))
            return PromptUpdateDetails.select_token_id([patch] * n, patch)

        return [PromptReplacement(modality="audio", target=[patch], replacement=replacement)]


# ------------------------------------------------------------------------------ the model
@MULTIMODAL_REGISTRY.register_processor(
    StepAudio2Processor, info=StepAudio2ProcessingInfo, dummy_inputs=StepAudio2DummyInputs
)
class StepAudio2ForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    """Step-Audio 2 mini for vLLM: audio encoder + adapter + Qwen2 decoder (untied head)."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return AUDIO_START + AUDIO_PATCH + AUDIO_END
        raise ValueError(f"Step-Audio 2 supports only audio input, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        if not isinstance(config, StepAudio2HFConfig):
            raise TypeError(
                f"expected a StepAudio2HFConfig (model_type step_audio_2), got {type(config).__name__}"
            )
        self.config = config
        ours = config.step_audio2_config()
        with self._mark_tower_model(vllm_config, "audio"):
            self.encoder = AudioEncoder(ours.audio)
            self.adapter = Adapter(ours.audio)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        mels = kwargs.get(MELS_FIELD)
        if mels is None:
            return []
        out_dtype = self.language_model.model.embed_tokens.weight.dtype
        return tuple(encode_mels(self.encoder, self.adapter, split_batched(mels), out_dtype))

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load official checkpoint tensors (``encoder.*``, ``adapter.*``, ``model.*``, ``lm_head.*``)."""
        mapped = ((vllm_weight_name(n), t) for n, t in weights if not is_ignored(n))
        loaded = AutoWeightsLoader(self).load_weights(mapped)
        missing = missing_params((n for n, _ in self.named_parameters()), loaded)
        if missing:
            shown = ", ".join(missing[:12]) + (
                f" … (+{len(missing) - 12})" if len(missing) > 12 else ""
            )
            raise WeightNameError(f"Step-Audio 2 checkpoint lacks tensors for: {shown}")
        return loaded


__all__ = [
    "MelItems",
    "StepAudio2DataParser",
    "StepAudio2DummyInputs",
    "StepAudio2ForCausalLM",
    "StepAudio2ProcessingInfo",
    "StepAudio2Processor",
]
