"""Server-Sent Events, as Triton's /generate_stream writes them: `data: {json}` lines, events end at a blank line."""

from __future__ import annotations


class SseDecoder:
    """Feed it lines one by one; it returns an event's data when a blank line completes the event."""

    def __init__(self):
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):  # comment / keep-alive
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """The pending event, if any (also call it at end of stream: the last event may lack its blank line)."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data
