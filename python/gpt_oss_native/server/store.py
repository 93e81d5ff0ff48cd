"""The in-memory store behind ``previous_response_id`` and ``GET /v1/responses/{id}``: bounded, LRU."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from openai_harmony import Message


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the response object as the client received it
    history: list[Message]  # the conversation after it (no system / developer message), for continuations
    call_names: dict[str, str]  # function call_id → function name, to resolve later function_call_output


class ResponseStore:
    """Keeps the ``capacity`` most recently stored or read responses; older ones are forgotten."""

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError(f"the response store needs a capacity >= 1, got {capacity}")
        self._capacity = capacity
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, response_id: str, entry: StoredResponse) -> None:
        with self._lock:
            self._entries[response_id] = entry
            self._entries.move_to_end(response_id)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            entry = self._entries.get(response_id)
            if entry is not None:
                self._entries.move_to_end(response_id)
            return entry

    def delete(self, response_id: str) -> bool:
        """Forgets a response; False if it was not stored."""
        with self._lock:
            return self._entries.pop(response_id, None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
