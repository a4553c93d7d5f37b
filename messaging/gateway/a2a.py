"""Google A2A interoperability: every agentpost agent is also an A2A agent.

Per agent ``<name>``, under the gateway's base URL:

- ``GET  /a2a/<name>/.well-known/agent-card.json``: the agent card.
- ``POST /a2a/<name>``: the JSON-RPC endpoint. ``SendMessage`` (A2A 1.0, what the
  ``a2a-sdk`` 1.x client sends, with the header ``A2A-Version: 1.0``) and
  ``message/send`` (A2A 0.3, older clients) both invoke the agent and wait for its
  reply. Bad requests get JSON-RPC errors (HTTP 200), from the SDK's own
  ``JsonRpcDispatcher`` but the first: -32700 unparsable JSON, -32600 not a
  JSON-RPC request, -32601 unknown method, -32602 bad params (-32600 on the 0.3
  methods: the SDK validates those whole), -32009 an ``A2A-Version`` header that
  does not match the method's protocol version (none means 0.3).

The A2A message's parts become the payload:

- one data part: its data, as is (``{"n": 7}``);
- one text part: ``{"text": "..."}``;
- anything else (several parts, a file part): ``{"parts": [...]}``, each part as
  its A2A 1.0 JSON, e.g. ``{"parts": [{"text": "hi"}, {"data": {"n": 7}}]}``.

A2A 1.0 carries data as ``google.protobuf.Value``, where every number is a double;
whole numbers are turned back into ints, so ``{"n": 7}`` arrives as ``7``, not
``7.0``. (Replies go out through the same type: the client reads ``7.0``.)

The reply:

- success: a ``Message`` from the agent (role agent) with one part: text for a
  ``str`` output, data for anything else; ``metadata.agentpost_message_id`` is our
  bus message id;
- failure (the agent failed, e.g. the request ended dead): a ``Task`` in state
  failed, whose id is our bus message id and whose status message is the error
  text. Tasks are not kept: ``GetTask`` on it answers task not found;
- whatever ``invoke`` raises is raised again from the route, outside the SDK: an
  ``HTTPException`` (401, 403, 404, 429 with Retry-After, 504) is that HTTP
  response, not a JSON-RPC error, and other errors reach the app's exception
  handlers like on every other route;
- an agent not in ``agent_names()``: JSON-RPC error -32600 (404 for its card).

Streaming, tasks, push notifications and the extended card are not offered; their
methods answer the matching A2A errors.

The card needs credentials like every gateway path (clients resolve it through an
httpx client carrying their key); it holds the agent's name, a generic description,
one skill named after the agent, the endpoint URL and the accepted auth schemes
(``X-API-Key`` header, or ``Authorization: Bearer <key or JWT>``), and nothing else:
no keys, workers, queues, versions or other agents.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from a2a.helpers import new_data_part, new_message, new_text_message, new_text_part
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.jsonrpc_models import JSONParseError
from a2a.server.request_handlers import RequestHandler, build_error_response
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    APIKeySecurityScheme,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    HTTPAuthSecurityScheme,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Part,
    SecurityRequirement,
    SecurityScheme,
    SendMessageRequest,
    StringList,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
)
from a2a.utils.constants import (
    AGENT_CARD_WELL_KNOWN_PATH,
    PROTOCOL_VERSION_0_3,
    PROTOCOL_VERSION_1_0,
    TransportProtocol,
)
from a2a.utils.errors import (
    ExtendedAgentCardNotConfiguredError,
    InternalError,
    InvalidParamsError,
    InvalidRequestError,
    PushNotificationNotSupportedError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from a2a.utils.proto_utils import validate_proto_required_fields
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from starlette.concurrency import run_in_threadpool

__all__ = ["A2AInvoke", "A2AResult", "add_a2a_routes"]

# The card's `version` is the agent's, which we do not know; a constant keeps the
# card free of anything that fingerprints the deployment.
_CARD_VERSION = "1.0.0"
_MODES = ["application/json", "text/plain"]
_STATE_KEY = "agentpost_a2a"
# Doubles hold every integer up to 2**53 exactly; beyond, a float stays a float.
_EXACT_INT = 2**53


@dataclass(frozen=True)
class A2AResult:
    """What invoking an agent for an A2A caller gave."""

    success: bool
    output: Any  # the agent's JSON reply (dict, list, str, number, None)
    error: str | None
    message_id: str  # our bus message id


class A2AInvoke(Protocol):
    """Authenticates from the request's headers and invokes ``agent``.

    May raise ``fastapi.HTTPException`` (401, 403, 404, 429 with Retry-After, 504):
    that becomes the HTTP response. Anything else it raises goes to the app's
    exception handlers, as from any route.
    """

    async def __call__(
        self,
        request: Request,
        agent: str,
        payload: Any,
        *,
        context_id: str | None,
        a2a_message_id: str | None,
    ) -> A2AResult: ...


@dataclass
class _Call:
    """One JSON-RPC call, shared by our route and the handler the SDK calls."""

    request: Request
    agent: str
    raised: Exception | None = None  # by invoke: our route raises it again


class _Raised(InternalError):
    """Stands in for what invoke raised while inside the SDK; its body is dropped."""


def add_a2a_routes(
    app: FastAPI, *, invoke: A2AInvoke, agent_names: Callable[[], Sequence[str]]
) -> None:
    """Serve every agent in ``agent_names()`` as an A2A agent (see the module doc)."""
    dispatcher = JsonRpcDispatcher(
        request_handler=_Handler(invoke, agent_names),
        context_builder=_ContextBuilder(),
        enable_v0_3_compat=True,
    )

    async def known(agent: str) -> bool:
        # agent_names may read the store: keep it off the event loop.
        return agent in await run_in_threadpool(agent_names)

    @app.get(f"/a2a/{{agent}}{AGENT_CARD_WELL_KNOWN_PATH}", name="a2a_agent_card")
    async def a2a_agent_card(agent: str, request: Request) -> JSONResponse:
        if not await known(agent):
            raise HTTPException(status_code=404, detail=f"unknown agent {agent!r}")
        url = str(request.url_for("a2a_rpc", agent=agent))
        # The SDK's serializer also writes the 0.3 fields (url, protocolVersion...).
        return JSONResponse(agent_card_to_dict(_agent_card(agent, url)))

    @app.post("/a2a/{agent}", name="a2a_rpc")
    async def a2a_rpc(agent: str, request: Request) -> Response:
        try:
            await request.json()  # cached: the dispatcher reuses it
        except (ValueError, RecursionError) as exc:
            # The SDK answers -32700 only for JSONDecodeError, and -32603 for a body
            # that is not UTF-8 or nests too deep; all three are parse errors.
            error = JSONParseError(message=f"invalid JSON: {exc}")
            return JSONResponse(build_error_response(None, error))
        call = _Call(request=request, agent=agent)
        setattr(request.state, _STATE_KEY, call)
        response = await dispatcher.handle_requests(request)
        # The SDK turns any exception into a JSON-RPC error (its 0.3 path even an
        # HTTPException), so what invoke raised travels around it and is raised
        # here, for the app's exception handlers: 401/403/429/504, 413, 422...
        if call.raised is not None:
            raise call.raised
        return response


class _ContextBuilder(DefaultServerCallContextBuilder):
    """Hands our route's `_Call` to the handler through the SDK's call context."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[_STATE_KEY] = getattr(request.state, _STATE_KEY)
        return context


class _Handler(RequestHandler):
    """The A2A methods, for an agent that answers one message with one reply."""

    def __init__(self, invoke: A2AInvoke, agent_names: Callable[[], Sequence[str]]) -> None:
        self._invoke = invoke
        self._agent_names = agent_names

    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        call = context.state[_STATE_KEY]
        assert isinstance(call, _Call)
        validate_proto_required_fields(params)  # message, its id, role and parts
        if call.agent not in await run_in_threadpool(self._agent_names):
            raise InvalidRequestError(message=f"unknown agent {call.agent!r}")
        message = params.message
        payload = _payload(message.parts)
        context_id = message.context_id or None
        try:
            result = await self._invoke(
                call.request,
                call.agent,
                payload,
                context_id=context_id,
                a2a_message_id=message.message_id or None,
            )
        except Exception as exc:
            call.raised = exc
            raise _Raised from exc
        if result.success:
            return _reply(result, context_id)
        return _failed_task(result, context_id)

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        raise UnsupportedOperationError(message="streaming is not offered; use SendMessage")
        yield  # an async generator, as the SDK expects

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        raise UnsupportedOperationError(message="streaming is not offered")
        yield  # an async generator, as the SDK expects

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        raise TaskNotFoundError(message="agentpost keeps no A2A tasks")

    async def on_list_tasks(
        self, params: ListTasksRequest, context: ServerCallContext
    ) -> ListTasksResponse:
        raise UnsupportedOperationError(message="agentpost keeps no A2A tasks")

    async def on_cancel_task(
        self, params: CancelTaskRequest, context: ServerCallContext
    ) -> Task | None:
        raise TaskNotFoundError(message="agentpost keeps no A2A tasks")

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        raise PushNotificationNotSupportedError

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        raise PushNotificationNotSupportedError

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        raise ExtendedAgentCardNotConfiguredError


def _agent_card(agent: str, url: str) -> AgentCard:
    jsonrpc = TransportProtocol.JSONRPC.value
    return AgentCard(
        name=agent,
        description=f"The agentpost agent {agent!r}: it answers a JSON payload with JSON.",
        version=_CARD_VERSION,
        # 1.0 first: the SDK client picks it; a 0.3 client reads the 0.3 one.
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding=jsonrpc, protocol_version=version)
            for version in (PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3)
        ],
        capabilities=AgentCapabilities(
            streaming=False, push_notifications=False, extended_agent_card=False
        ),
        security_schemes={
            "apiKey": SecurityScheme(
                api_key_security_scheme=APIKeySecurityScheme(
                    location="header", name="X-API-Key", description="an agentpost API key"
                )
            ),
            "bearer": SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="bearer",
                    bearer_format="JWT",
                    description="an agentpost API key or JWT as a bearer token",
                )
            ),
        },
        # Either scheme on its own is enough (each requirement is an alternative).
        security_requirements=[
            SecurityRequirement(schemes={"apiKey": StringList()}),
            SecurityRequirement(schemes={"bearer": StringList()}),
        ],
        default_input_modes=_MODES,
        default_output_modes=_MODES,
        skills=[
            AgentSkill(
                id=agent,
                name=agent,
                description=f"Send {agent!r} a JSON payload (a data part) and get its reply.",
                tags=["agentpost"],
                input_modes=_MODES,
                output_modes=_MODES,
            )
        ],
    )


def _payload(parts: Sequence[Part]) -> Any:
    for index, part in enumerate(parts):
        if part.WhichOneof("content") is None:
            raise InvalidParamsError(message=f"message.parts[{index}] has no content")
    if len(parts) == 1 and parts[0].HasField("data"):
        return _whole_numbers(json_format.MessageToDict(parts[0].data))
    if len(parts) == 1 and parts[0].HasField("text"):
        return {"text": parts[0].text}
    return {"parts": [_whole_numbers(json_format.MessageToDict(part)) for part in parts]}


def _whole_numbers(value: Any) -> Any:
    """Undo protobuf's doubles: 7.0 -> 7 (JSON itself does not tell them apart)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_INT:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def _reply(result: A2AResult, context_id: str | None) -> Message:
    output = result.output
    part = new_text_part(output) if isinstance(output, str) else new_data_part(output)
    message = new_message([part], context_id=context_id)
    message.metadata.update({"agentpost_message_id": result.message_id})
    return message


def _failed_task(result: A2AResult, context_id: str | None) -> Task:
    task_id = result.message_id or str(uuid.uuid4())
    context_id = context_id or str(uuid.uuid4())  # a Task must have one
    status = TaskStatus(
        state=TaskState.TASK_STATE_FAILED,
        message=new_text_message(
            result.error or "the agent failed", context_id=context_id, task_id=task_id
        ),
    )
    status.timestamp.GetCurrentTime()
    task = Task(id=task_id, context_id=context_id, status=status)
    task.metadata.update({"agentpost_message_id": result.message_id})
    return task
