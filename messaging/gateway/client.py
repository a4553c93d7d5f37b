"""``A2AClient``: call agents through an agentpost gateway over HTTP (httpx)."""

from __future__ import annotations

from typing import Any, Self

import httpx

from messaging.gateway.models import (
    AgentInvocationRequest,
    AgentInvocationResponse,
    MessageAccepted,
    MessageRequest,
)
from wire.errors import GatewayError, RequestTimeout

__all__ = ["A2AClient", "AsyncA2AClient"]


def _options(base_url: str, api_key: str | None, token: str | None, timeout_s: float) -> Any:
    if (api_key is None) == (token is None):
        raise ValueError("give exactly one of api_key= or token=")
    headers = (
        {"X-API-Key": api_key} if api_key is not None else {"Authorization": f"Bearer {token}"}
    )
    return {"base_url": base_url, "headers": headers, "timeout": timeout_s}


def _invoke_path(request: AgentInvocationRequest) -> str:
    if request.target_agent is None:
        raise ValueError("request.target_agent names the agent to invoke")
    return f"/v1/agents/{request.target_agent}/invoke"


def _read(response: httpx.Response) -> Any:
    """The JSON body, or the gateway's refusal as ``GatewayError``/``RequestTimeout``."""
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    if response.status_code == 504:
        raise RequestTimeout(str(body.get("detail")), message_id=str(body.get("message_id")))
    if response.status_code >= 400:
        retry_after = response.headers.get("Retry-After")
        raise GatewayError(
            response.status_code,
            body.get("detail") if isinstance(body, dict) else body,
            retry_after_s=float(retry_after) if retry_after else None,
        )
    return body


class A2AClient:
    """Synchronous client: ``invoke`` waits for the agent's reply."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout_s: float = 330.0,
    ) -> None:
        self._http = httpx.Client(**_options(base_url, api_key, token, timeout_s))

    def invoke(self, request: AgentInvocationRequest) -> AgentInvocationResponse:
        """Invoke ``request.target_agent``.

        Raises:
            RequestTimeout: no reply in ``request.timeout_s`` (the work still completes;
                read it later with ``status(exc.message_id)``).
            GatewayError: refused (401, 403, 404, 413, 422, 429 …), with the reason.
        """
        body = request.model_dump(mode="json", exclude_none=True)
        return AgentInvocationResponse.model_validate(
            _read(self._http.post(_invoke_path(request), json=body))
        )

    def send(self, request: MessageRequest) -> MessageAccepted:
        """Send without waiting."""
        body = request.model_dump(mode="json", exclude_none=True)
        return MessageAccepted.model_validate(_read(self._http.post("/v1/messages", json=body)))

    def status(self, message_id: str) -> dict[str, Any]:
        """A message's status, attempts and reply."""
        found: dict[str, Any] = _read(self._http.get(f"/v1/messages/{message_id}"))
        return found

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncA2AClient:
    """The same calls for asyncio code."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout_s: float = 330.0,
    ) -> None:
        self._http = httpx.AsyncClient(**_options(base_url, api_key, token, timeout_s))

    async def invoke(self, request: AgentInvocationRequest) -> AgentInvocationResponse:
        """Invoke ``request.target_agent`` (see ``A2AClient.invoke``)."""
        body = request.model_dump(mode="json", exclude_none=True)
        response = await self._http.post(_invoke_path(request), json=body)
        return AgentInvocationResponse.model_validate(_read(response))

    async def send(self, request: MessageRequest) -> MessageAccepted:
        """Send without waiting."""
        body = request.model_dump(mode="json", exclude_none=True)
        return MessageAccepted.model_validate(
            _read(await self._http.post("/v1/messages", json=body))
        )

    async def status(self, message_id: str) -> dict[str, Any]:
        """A message's status, attempts and reply."""
        found: dict[str, Any] = _read(await self._http.get(f"/v1/messages/{message_id}"))
        return found

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
