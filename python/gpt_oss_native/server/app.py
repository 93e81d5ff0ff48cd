"""The FastAPI application: OpenAI-compatible Responses, Chat Completions and Models endpoints.

Errors a client can cause (a malformed body, an unknown model, a context overflow, a bad parameter) are
answered with a 4xx and an OpenAI-style error object; a client that goes away mid-stream stops its
generation and frees its engine sequence.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import harmony
from .builtin_tools import ToolFactory
from .chat_completions import ChatCompletionsEndpoint
from .errors import ApiError, error_body
from .responses_api import ResponsesEndpoint
from .schemas import ChatCompletionRequest, ResponsesRequest
from .store import ResponseStore
from .streaming import TokenEngine

log = logging.getLogger(__name__)


def create_app(
    engine: TokenEngine,
    *,
    model_name: str,
    model_aliases: Sequence[str] = (),
    tool_factories: dict[str, ToolFactory] | None = None,
    max_concurrent: int | None = None,
    store_capacity: int = 1024,
) -> FastAPI:
    """An app serving ``engine`` as ``model_name``.

    ``model_aliases``: other names requests may use for the model (e.g. the path it was loaded from).
    ``tool_factories``: ``"browser"`` / ``"python"`` → a factory of the built-in tool behind the Responses
    API's ``web_search`` / ``code_interpreter`` tools (one instance per request); absent ones are refused.
    ``max_concurrent``: generations running at once (default: the engine's ``max_sequences``); more wait.
    """
    harmony.get_encoding()  # loads the vocabulary now: a problem shows at startup, not in the first request
    app = FastAPI(title="gpt-oss-native")
    created = int(time.time())
    names = {model_name, *model_aliases}
    slots = threading.BoundedSemaphore(max_concurrent or engine.max_sequences)
    store = ResponseStore(store_capacity)

    def resolve_model(requested: str | None) -> str:
        if requested is None or requested in names:
            return model_name
        raise ApiError(
            f"The model '{requested}' does not exist. This server serves '{model_name}'.",
            status=404,
            param="model",
            code="model_not_found",
        )

    responses = ResponsesEndpoint(engine, store, resolve_model, slots, dict(tool_factories or {}))
    chat = ChatCompletionsEndpoint(engine, resolve_model, slots)
    app.state.store = store
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # Of the alternatives a union reports, the deepest error is the one that says what is wrong.
        first = max(errors, key=lambda e: len(e.get("loc", ())), default={"loc": (), "msg": "invalid request"})
        param = _param_path(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            message = f"The request body is not valid JSON: {first.get('msg')}"
        elif param is None and first.get("type") == "model_attributes_type":
            message = "The request body must be a JSON object (Content-Type: application/json)."
        else:
            message = f"Invalid request: {first.get('msg')}" + (f" (at '{param}')" if param else "")
            if len(errors) > 1:
                message += f", and {len(errors) - 1} more error(s)"
        return JSONResponse(error_body(message, param=param, code="invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), code="not_found" if exc.status_code == 404 else None),
            status_code=exc.status_code,
        )

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(error_body(f"Internal server error: {exc}", type="server_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(model_name, created)]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in names:
            raise ApiError(f"The model '{model_id}' does not exist.", status=404, param="model",
                           code="model_not_found")
        return _model_card(model_name, created)

    @app.post("/v1/responses")
    async def create_response(body: ResponsesRequest, request: Request):
        prepared = responses.prepare(body)
        if body.stream:
            events = responses.events(prepared, _never_disconnected)
            return _sse(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" async for e in events)
        final = None
        async for event in responses.events(prepared, request.is_disconnected):
            final = event
        if final is None or final["type"] not in _TERMINAL_EVENTS:  # the client went away; nobody reads this
            return JSONResponse(error_body("the client went away", type="server_error"), status_code=499)
        if final["type"] == "response.failed":
            error = final["response"]["error"]
            return JSONResponse(error_body(error["message"], type="server_error", code=error["code"]),
                                status_code=500)
        return final["response"]

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str) -> dict[str, Any]:
        entry = store.get(response_id)
        if entry is None:
            raise ApiError(f"No response found with id '{response_id}'.", status=404, param="response_id",
                           code="not_found")
        return entry.response

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> dict[str, Any]:
        if not store.delete(response_id):
            raise ApiError(f"No response found with id '{response_id}'.", status=404, param="response_id",
                           code="not_found")
        return {"id": response_id, "object": "response", "deleted": True}

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, request: Request):
        prepared = chat.prepare(body)
        if body.stream:
            return _sse(_chat_sse(chat.chunks(prepared, _never_disconnected)))
        return await chat.complete(prepared, request.is_disconnected)

    return app


_TERMINAL_EVENTS = {"response.completed", "response.incomplete", "response.failed"}


async def _never_disconnected() -> bool:
    # Streams learn of a disconnect from Starlette, which cancels the response's iterator.
    return False


def _sse(lines: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        lines, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _chat_sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    async for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


_UNION_BRANCHES = {"str", "int", "float", "bool", "dict", "list", "none"}


def _param_path(loc: Sequence[Any]) -> str | None:
    """``("body", "input", "list[...]", 0, "message", "content")`` → ``input[0].content``: pydantic's union
    branch and tag names dropped."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not ("[" in part or "-" in part or part in _UNION_BRANCHES):
            path += f".{part}" if path else part
    return path or None


def _model_card(model_name: str, created: int) -> dict[str, Any]:
    return {"id": model_name, "object": "model", "created": created, "owned_by": "gpt-oss-native"}
