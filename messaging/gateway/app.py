"""The HTTP gateway: agents in other services reach ours through the bus.

Every path is authenticated (middleware, before the body is even parsed), then
rate limited per caller, then authorized per agent and operation (default deny);
refusals store and enqueue nothing and are audited. The authenticated subject is
the envelope's sender, and idempotency keys are scoped to it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from sqlalchemy import text

from messaging.gateway.a2a import A2AResult, add_a2a_routes
from messaging.gateway.auth import AuthFailed, Principal
from messaging.gateway.bodylimit import BodyLimit
from messaging.gateway.models import (
    AgentInvocationRequest,
    AgentInvocationResponse,
    ErrorBody,
    MessageAccepted,
    MessageRequest,
    public_state,
)
from messaging.gateway.service import Gateway, InvokeTimeout, scoped_key
from messaging.results import MessageState
from wire.errors import (
    AgentpostError,
    BrokerUnavailable,
    InboxFull,
    InvalidEnvelope,
    MessageNotFound,
    PayloadTooLarge,
    StoreUnavailable,
    UnknownAgent,
)
from wire.settings import Settings

__all__ = ["create_gateway"]

log = logging.getLogger("agentpost.gateway")

# Documented in the OpenAPI schema; the check itself runs in the middleware.
_SECURITY = [
    Depends(APIKeyHeader(name="X-API-Key", auto_error=False)),
    Depends(HTTPBearer(auto_error=False)),
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 422, 429, 503)
}


def create_gateway(settings: Settings | None = None) -> FastAPI:
    """The FastAPI app (``agentpost serve`` runs it with uvicorn).

    Raises:
        ConfigurationError: an authentication provider that is not safely configured.
    """
    gateway = Gateway(settings or Settings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        try:  # the open window's refusal counts
            await run_in_threadpool(gateway.refusals.flush)
        except StoreUnavailable as exc:
            log.error("audit counts not written at shutdown: %s", exc)

    app = FastAPI(
        lifespan=lifespan,
        title="agentpost gateway",
        version="1",
        description="Invoke and message agents over HTTP. Every route needs X-API-Key "
        "or Authorization: Bearer (an API key or a JWT).",
        docs_url=None,
        redoc_url=None,
        responses=_ERRORS,
    )
    app.state.gateway = gateway
    _add_auth_middleware(app, gateway)
    app.add_middleware(BodyLimit, limit=gateway.settings.gateway_body_limit)
    _add_error_handlers(app)
    _add_routes(app, gateway)

    async def a2a_invoke(
        request: Request,
        agent: str,
        payload: Any,
        *,
        context_id: str | None,
        a2a_message_id: str | None,
    ) -> A2AResult:
        body = AgentInvocationRequest(
            target_agent=agent,
            payload=payload,
            conversation_id=context_id,
            idempotency_key=a2a_message_id,
        )
        try:
            done = await gateway.invoke_in_thread(_principal(request), agent, body)
        except InvokeTimeout as exc:
            raise HTTPException(504, str(exc)) from None
        return A2AResult(done.success, done.output, done.error, done.message_id)

    add_a2a_routes(app, invoke=a2a_invoke, agent_names=lambda: _agent_names(gateway))
    return app


def _agent_names(gateway: Gateway) -> list[str]:
    return [a.name for a in gateway.client.agents()]


def _principal(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


Caller = Annotated[Principal, Depends(_principal)]


def _add_auth_middleware(app: FastAPI, gateway: Gateway) -> None:
    @app.middleware("http")
    async def authenticate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            admitted = await _admit(gateway, request)
        except (StoreUnavailable, BrokerUnavailable) as exc:
            # The key store or the rate limit's buckets are down: say which, as a 503.
            return _refusal({"detail": str(exc)}, 503)
        if isinstance(admitted, Response):
            return admitted  # refused
        principal = request.state.principal = admitted
        with gateway.in_flight.slot(principal.subject) as granted:
            if not granted:
                return JSONResponse(
                    {
                        "detail": f"{gateway.in_flight.limit} requests of this caller are "
                        "in flight already (AGENTPOST_GATEWAY_MAX_IN_FLIGHT): wait for one"
                    },
                    status_code=429,
                    headers={"Retry-After": "1"},
                )
            return await call_next(request)


async def _admit(gateway: Gateway, request: Request) -> Principal | Response:
    """The caller, authenticated and within its rate, or the response refusing it.

    Raises:
        StoreUnavailable, BrokerUnavailable: the keys or the buckets cannot be read.
    """
    try:
        principal = await run_in_threadpool(gateway.auth.authenticate, request.headers)
    except AuthFailed as exc:
        address = request.client.host if request.client else "?"
        wait_s = await run_in_threadpool(gateway.limiter.failure_wait_s, address)
        if wait_s > 0:
            # Past the address's allowance: a 429, counted in the window's row for it.
            await run_in_threadpool(
                gateway.refusals.record, exc.subject, "authenticate", "limited", detail=address
            )
            return _too_many("too many failed authentications from this address", wait_s)
        await run_in_threadpool(
            gateway.audit,
            exc.subject,
            f"{request.method} {request.url.path}"[:32],
            "denied",
            detail=str(exc),
        )
        return JSONResponse(
            {"detail": f"unauthenticated: {exc}"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer, ApiKey header="X-API-Key"'},
        )
    wait_s = await run_in_threadpool(gateway.limiter.wait_s, principal.subject)
    if wait_s > 0:
        await run_in_threadpool(
            gateway.audit, principal.subject, "rate", "limited", detail=request.url.path
        )
        limit = f"rate limit: {gateway.settings.rate_limit_per_s:g}/s per caller"
        return _too_many(limit, wait_s)
    return principal


def _too_many(detail: str, wait_s: float) -> Response:
    return JSONResponse(
        {"detail": detail},
        status_code=429,
        headers={"Retry-After": str(max(1, round(wait_s + 0.5)))},
    )


def _refusal(body: dict[str, Any], status: int) -> Response:
    # ASCII-escaped: an error message may quote input that is not valid UTF-8.
    text = json.dumps(body, ensure_ascii=True, default=str)
    return Response(text, status_code=status, media_type="application/json")


def _add_error_handlers(app: FastAPI) -> None:
    def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        # Name each bad field without echoing its value: the input may not even be
        # renderable as JSON (NaN, lone surrogates), and it is the caller's own data.
        errors = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
        return _refusal({"detail": errors}, 422)

    app.add_exception_handler(RequestValidationError, invalid)

    statuses: list[tuple[type[AgentpostError], int]] = [
        (UnknownAgent, 404),
        (MessageNotFound, 404),
        (PayloadTooLarge, 413),
        (InvalidEnvelope, 422),
        (StoreUnavailable, 503),
        (BrokerUnavailable, 503),
    ]
    for error, status in statuses:

        def handle(_: Request, exc: Exception, status: int = status) -> Response:
            return _refusal({"detail": str(exc)}, status)

        app.add_exception_handler(error, handle)

    def timed_out(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvokeTimeout)
        return _refusal({"detail": str(exc), "message_id": exc.message_id}, 504)

    app.add_exception_handler(InvokeTimeout, timed_out)

    def full(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, InboxFull)
        # The caller is told to come back, like any other rate of acceptance it exceeds.
        body = {"detail": str(exc), "backlog": exc.backlog, "limit": exc.limit}
        return JSONResponse(body, status_code=429, headers={"Retry-After": "1"})

    app.add_exception_handler(InboxFull, full)


def _add_routes(app: FastAPI, gateway: Gateway) -> None:

    @app.post(
        "/v1/agents/{agent}/invoke",
        dependencies=_SECURITY,
        responses={504: {"model": ErrorBody, "description": "no reply in time"}},
    )
    async def invoke(
        agent: str, body: AgentInvocationRequest, caller: Caller
    ) -> AgentInvocationResponse:
        """Send to ``agent`` through the bus and wait for its reply."""
        return await gateway.invoke_in_thread(caller, agent, body)

    @app.post("/v1/messages", status_code=202, dependencies=_SECURITY)
    def send(body: MessageRequest, caller: Caller) -> MessageAccepted:
        """Send without waiting: 202 with the message id."""
        agent = body.target_agent
        gateway.require(caller, "send", agent)
        sender = gateway.sender(caller, body.source_agent, "send", agent)
        gateway.require_own_chain(sender, body.correlation_id)
        sent = gateway.client.send(
            agent,
            body.payload,
            sender=sender,
            correlation_id=body.correlation_id,
            idempotency_key=scoped_key(caller, body.idempotency_key),
            priority=body.priority,
            ttl_s=body.ttl_s,
            metadata=body.metadata,
        )
        gateway.audit(sender, "send", "ok", agent=agent, message_id=sent.message_id)
        return MessageAccepted(**sent.model_dump())

    @app.get("/v1/messages/{message_id}", dependencies=_SECURITY)
    def message(message_id: str, caller: Caller) -> MessageState:
        """A message's status, every attempt, and its reply."""
        state = gateway.client.status(message_id)
        if not gateway.may_read(caller, state):
            gateway.deny(caller, "read", state.receiver)
        return public_state(state)

    @app.get("/v1/correlations/{correlation_id}", dependencies=_SECURITY)
    def correlation(correlation_id: str, caller: Caller) -> list[MessageState]:
        """The chain: every message of the correlation this caller may read."""
        if "read" not in caller.operations:
            gateway.deny(caller, "read", "*")
        chain = [
            public_state(s)
            for s in gateway.client.trace(correlation_id)
            if gateway.may_read(caller, s)
        ]
        if not chain:
            raise MessageNotFound(f"no readable message in correlation {correlation_id!r}")
        return chain

    @app.get("/v1/dead-letters", dependencies=_SECURITY)
    def dead_letters(
        caller: Caller,
        agent: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[MessageState]:
        """Dead messages this caller may read, newest first."""
        if agent is not None:
            gateway.require(caller, "read", agent)
        elif "read" not in caller.operations:
            gateway.deny(caller, "read", "*")
        found = gateway.client.dead_letters(receiver=agent, limit=limit)
        return [public_state(s) for s in found if gateway.may_read(caller, s)]

    @app.post("/v1/dead-letters/{message_id}/redrive", dependencies=_SECURITY)
    def redrive(message_id: str, caller: Caller) -> MessageAccepted:
        """Send a dead message again (same id and key, attempts reset)."""
        state = gateway.client.status(message_id)
        gateway.require(caller, "redrive", state.receiver)
        sent = gateway.client.redrive(message_id)
        gateway.audit(caller.subject, "redrive", "ok", agent=state.receiver, message_id=message_id)
        return MessageAccepted(**sent.model_dump())

    @app.get("/healthz", dependencies=_SECURITY)
    def healthz(_: Caller, response: Response) -> dict[str, str]:
        """Broker and database reachable (503 if either is not)."""
        checks = {"database": "ok", "broker": "ok"}
        try:
            with gateway.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            checks["database"] = f"down: {type(exc).__name__}"
        try:
            with gateway.client.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:
            checks["broker"] = f"down: {type(exc).__name__}"
        if any(v != "ok" for v in checks.values()):
            response.status_code = 503
        return checks
