"""FlowRuntime: a YAML flow (``FlowSpec``) running on a live Step-Audio 2 call.

``attach_flow`` wires a flow into an assembled call pipeline:

- a ``pipecat.flows.FlowManager`` walks the nodes rendered by ``render_nodes``; a node change
  sends the persona (``LLMUpdateSettingsFrame``), the node's instructions (appended or, for
  ``context_strategy: reset``, replacing the history), its tools (``LLMSetToolsFrame``) and a
  response request; ``StepAudio2Service`` turns these into ``session.update`` /
  ``input_text.append`` / ``response.create`` on the open model session, so audio never stops;
- the node's speaking style goes out as ``LLMUpdateSettingsFrame(delta=StepAudio2Settings(
  style=...))`` (the ``set_style`` pre-action);
- tools (webhook, python, built-ins) come from ``pipeline.flows.tools.ToolBox``; variables the model
  saves land in ``flow_manager.state``;
- silence: the user aggregator's idle timer (``UserIdleTimeoutUpdateFrame``) re-prompts
  ``timeouts.max_reprompts`` times, then ends or transfers the call;
- the call ends (``end: true`` nodes, the ``end_call`` tool, silence) by an ``EndFrame`` the
  service holds until the goodbye response is done; once the pipeline has finished,
  ``CallControl.hang_up`` runs. Transfers run after the bot's announcement.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from loguru import logger
from pipecat.flows import FlowManager
from pipecat.frames.frames import (
    EndFrame,
    FunctionCallResultFrame,
    InputDTMFFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMUpdateSettingsFrame,
    UserIdleTimeoutUpdateFrame,
    UserStartedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed

from pipeline.flows.format.model import FlowSpec
from pipeline.flows.format.pipecat_nodes import (
    STYLE_ACTION,
    TRANSFER_ACTION,
    render_nodes,
    tool_function,
)
from pipeline.flows.tools.context import ToolContext
from pipeline.flows.tools.registry import ToolBox
from pipeline.step_audio2.service import StepAudio2Service, StepAudio2Settings

if TYPE_CHECKING:
    from pipeline.flows.call_control import CallControl

END_ACTION = "end_conversation"
#: After ``end_call``'s result: end once the service has been idle this long with no goodbye.
END_GRACE_SECS = 1.5
#: Instruction for the last words before a silence timeout ends or transfers the call.
SILENCE_GOODBYE = "The caller has been silent for a while. Say a short goodbye now."
SILENCE_TRANSFER = (
    "The caller has been silent for a while. Tell them you are transferring them to a colleague."
)


class FlowRuntime:
    """Runs one flow on one call (create it with ``attach_flow``; then ``await start()``)."""

    def __init__(
        self,
        spec: FlowSpec,
        *,
        service: StepAudio2Service,
        context_aggregator: Any,
        worker: Any,
        call_control: CallControl | None = None,
        dtmf_timeout_secs: float = 15.0,
        end_fallback_secs: float = 15.0,
        observer_hub: Any = None,
    ) -> None:
        self.spec = spec
        self.service = service
        self.worker = worker
        self.call_control = call_control
        self.end_fallback_secs = end_fallback_secs
        self.ctx = ToolContext(
            spec,
            call_control=call_control,
            update_settings=self.update_settings,
            schedule_end=self.schedule_end,
            dtmf_timeout_secs=dtmf_timeout_secs,
        )
        self.tools = ToolBox(spec, self.ctx)
        self.nodes = render_nodes(spec, self.tools.handlers)
        self.flow_manager = FlowManager(
            llm=service,
            context_aggregator=context_aggregator,
            worker=worker,
            global_functions=[tool_function(t, h) for t, h in self.tools.global_tools],
        )
        # Declared variables exist from the start, so ``{{ name }}`` never fails a node change.
        self.flow_manager.state.update({name: "" for name in spec.variables})
        self.flow_manager.register_action(STYLE_ACTION, self._style_action)
        self.flow_manager.register_action(TRANSFER_ACTION, self._transfer_action)
        self.flow_manager.register_action(END_ACTION, self._end_action)

        #: Why the call is ending (set once an end is scheduled), and whether hang-up ran.
        self.end_reason: str | None = None
        self.hung_up = False
        #: Node names in the order they were entered.
        self.node_history: list[str] = []
        self.reprompts = 0
        self._end_stage: str | None = None  # "result" → "start" → ended
        self._after_response: list[tuple[str, Any]] = []  # ("armed"|"started", callback)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False

        if observer_hub is not None:  # the call's FanOutObserver (one Pipecat observer task)
            observer_hub.add(_RuntimeObserver(self))
        else:
            worker.add_observer(_RuntimeObserver(self))
        context_aggregator.user().add_event_handler("on_user_turn_idle", self._on_idle)
        worker.add_event_handler("on_pipeline_finished", self._on_finished)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Enter the initial node (the bot greets now when ``who_speaks_first: bot``).

        Call once the caller is connected (``on_client_connected``) instead of queueing an
        ``LLMRunFrame``.
        """
        if self._started:
            return
        self._started = True
        silence = self.spec.timeouts.silence_secs
        if silence > 0:
            await self.worker.queue_frame(UserIdleTimeoutUpdateFrame(timeout=silence))
        await self.flow_manager.initialize(self.nodes[self.spec.initial_node])

    @property
    def current_node(self) -> str | None:
        """The node the conversation is in."""
        return self.flow_manager.current_node

    @property
    def state(self) -> dict[str, Any]:
        """Variables collected so far (``flow_manager.state``)."""
        return self.flow_manager.state

    async def go_to(self, node: str) -> None:
        """Move to ``node`` now (as if its transition function had been called)."""
        if node not in self.nodes:
            raise KeyError(
                f"flow '{self.spec.name}' has no node '{node}' (known: {', '.join(self.nodes)})"
            )
        await self.flow_manager.set_node_from_config(self.nodes[node])

    # -- settings -------------------------------------------------------------------------------

    async def update_settings(self, *, voice: str | None = None, style: str | None = None) -> None:
        """Change the model session's voice and/or style mid-call."""
        changes: dict[str, Any] = {}
        if voice is not None:
            changes["voice"] = voice
        if style is not None:
            changes["style"] = style
        if changes:
            await self.worker.queue_frame(
                LLMUpdateSettingsFrame(delta=StepAudio2Settings(**changes))
            )

    async def _style_action(self, action: dict[str, Any], flow_manager: Any) -> None:
        node = action.get("node")
        if node:
            self.node_history.append(node)
        await self.update_settings(style=action["style"])

    # -- ending and transferring ----------------------------------------------------------------

    async def schedule_end(self, reason: str) -> None:
        """End the call after the bot's next response (the goodbye after a tool result)."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self._end_stage = "result"
        self._spawn(self._end_fallback())

    async def _end_action(self, action: dict[str, Any], flow_manager: Any) -> None:
        """``end: true`` node: its response was requested just before, so the ``EndFrame``
        reaches the service behind it and is held until the goodbye is done."""
        if self.end_reason is None:
            self.end_reason = "flow_end"
        await self.worker.queue_frame(EndFrame(reason=self.end_reason))

    async def _transfer_action(self, action: dict[str, Any], flow_manager: Any) -> None:
        """``transfer: NUMBER`` node: transfer once the bot's announcement is done."""
        self._after_next_response(self._transfer_callback(action["number"]))

    def _transfer_callback(self, number: str) -> Any:
        async def transfer() -> None:
            if self.call_control is None:
                logger.warning(f"flow {self.spec.name}: transfer to {number} but no CallControl")
                return
            result = await self.call_control.transfer(number)
            logger.info(
                f"flow {self.spec.name}: transfer to {number}: ok={result.ok} {result.detail}"
            )

        return transfer

    def _after_next_response(self, callback: Any) -> None:
        self._after_response.append(("armed", callback))

    async def _end_now(self) -> None:
        if self._end_stage is None:
            return
        self._end_stage = None
        await self.worker.queue_frame(EndFrame(reason=self.end_reason))

    async def _end_fallback(self) -> None:
        """End anyway when no goodbye comes: the service quiet for ``END_GRACE_SECS`` after
        the tool result, or ``end_fallback_secs`` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.end_fallback_secs
        quiet_since: float | None = None
        while self._end_stage is not None:
            now = loop.time()
            if self._end_stage == "start" and not self.service.response_active:
                quiet_since = quiet_since if quiet_since is not None else now
                if now - quiet_since >= END_GRACE_SECS:
                    logger.info(f"flow {self.spec.name}: no goodbye response; ending the call")
                    await self._end_now()
                    return
            else:
                quiet_since = None
            if now >= deadline:
                logger.warning(f"flow {self.spec.name}: goodbye took too long; ending the call")
                await self._end_now()
                return
            await asyncio.sleep(0.05)

    async def _on_finished(self, worker: Any, frame: Any) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.tools.close()
        if (
            isinstance(frame, EndFrame)
            and self.end_reason
            and self.call_control
            and not self.hung_up
        ):
            self.hung_up = True
            await self.call_control.hang_up(self.end_reason)

    # -- silence --------------------------------------------------------------------------------

    async def _on_idle(self, aggregator: Any) -> None:
        timeouts = self.spec.timeouts
        if self.end_reason is not None:
            return
        self.reprompts += 1
        if self.reprompts <= timeouts.max_reprompts:
            logger.info(f"flow {self.spec.name}: caller silent, re-prompt {self.reprompts}")
            await self._instruct(timeouts.reprompt)
            return
        if timeouts.then == "transfer" and timeouts.transfer_to:
            self.end_reason = "caller_silent_transfer"
            await self._instruct(SILENCE_TRANSFER)
            self._after_next_response(self._transfer_callback(timeouts.transfer_to))
            return
        self.end_reason = "caller_silent"
        await self._instruct(SILENCE_GOODBYE)
        await self.worker.queue_frame(EndFrame(reason=self.end_reason))

    async def _instruct(self, text: str) -> None:
        await self.worker.queue_frame(
            LLMMessagesAppendFrame([{"role": "developer", "content": text}], run_llm=True)
        )

    # -- observed frames ------------------------------------------------------------------------

    async def _on_frame(self, frame: Any) -> None:
        if isinstance(frame, InputDTMFFrame):
            self.ctx.dtmf.feed(frame.button.value)
        elif isinstance(frame, UserStartedSpeakingFrame):
            self.reprompts = 0
        elif isinstance(frame, FunctionCallResultFrame):
            if self._end_stage == "result":
                self._end_stage = "start"
        elif isinstance(frame, LLMFullResponseStartFrame):
            if self._end_stage == "start":
                await self._end_now()  # the service holds the EndFrame until this response ends
            self._after_response = [("started", cb) for _, cb in self._after_response]
        elif isinstance(frame, LLMFullResponseEndFrame):
            ready = [cb for stage, cb in self._after_response if stage == "started"]
            self._after_response = [(s, cb) for s, cb in self._after_response if s != "started"]
            for callback in ready:
                self._spawn(callback())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _RuntimeObserver(BaseObserver):
    """Feeds the runtime the frames it reacts to (first push of each frame only)."""

    _TYPES = (
        InputDTMFFrame,
        UserStartedSpeakingFrame,
        FunctionCallResultFrame,
        LLMFullResponseStartFrame,
        LLMFullResponseEndFrame,
    )

    #: No audio frames (see ``pipeline.observers.worker_proxy``).
    wants_audio = False

    def __init__(self, runtime: FlowRuntime) -> None:
        super().__init__(observe_every_push=False)
        self._runtime = runtime

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, self._TYPES):
            await self._runtime._on_frame(data.frame)


def attach_flow(
    spec: FlowSpec,
    *,
    service: StepAudio2Service,
    context_aggregator: Any,
    worker: Any,
    call_control: CallControl | None = None,
    observer_hub: Any = None,
) -> FlowRuntime:
    """Run ``spec`` on a call pipeline; returns the runtime (call ``await runtime.start()``
    when the caller is connected).

    ``context_aggregator`` is the ``LLMContextAggregatorPair`` of the pipeline (its ``LLMContext``
    should start empty: the initial node brings the greeting instruction); ``worker`` is the
    call's ``PipelineWorker`` (not yet running); ``call_control`` hangs up and transfers;
    ``observer_hub`` (a ``FanOutObserver`` already on the worker) takes the runtime's observer.
    """
    return FlowRuntime(
        spec,
        service=service,
        context_aggregator=context_aggregator,
        worker=worker,
        call_control=call_control,
        observer_hub=observer_hub,
    )
