"""Generated tokens → the text a client sees: incremental detokenising, stop strings, what a stream may release, and
the final message with its tool calls.

Streaming. Text is detokenised incrementally and a piece is released only once it is final: never half a multi-byte
character, never the start of what may become a stop string, and, when tools are on, nothing from ``<tool_call>`` on
(calls are sent when the choice ends, as ``tool_calls`` deltas). A non-streamed answer is built from the same events,
so a stream always adds up to the non-streamed message.
"""

from __future__ import annotations

from collections.abc import Iterator

from openft.chatformat import TOOL_CALL_OPEN, parse_tool_calls


class Detokenizer:
    """Token ids → text, one token at a time, releasing text only once it cannot change (no split characters).

    Decodes a short window starting at the last point where the text was complete, so each step costs the same
    however long the completion gets; the pieces always add up to decoding all ids at once.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.start = 0  # window start: a clean boundary
        self.read = 0  # ids before this point have been released

    def push(self, token: int) -> str:
        self.ids.append(token)
        released, current = self._window()
        if len(current) > len(released) and not current.endswith("\ufffd"):
            self.start, self.read = self.read, len(self.ids)
            return current[len(released):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (a trailing incomplete character decodes as U+FFFD, as in a full decode)."""
        released, current = self._window()
        self.start = self.read = len(self.ids)
        return current[len(released):]

    def _window(self) -> tuple[str, str]:
        def decode(ids):
            return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

        return decode(self.ids[self.start : self.read]), decode(self.ids[self.start :])


class Choice:
    """One choice's text: stop strings, what may be released to a stream, and the final message."""

    def __init__(self, tokenizer, stop: tuple[str, ...], tools: bool, opening: str = ""):
        """``opening``: text the prompt already started the turn with (an enforced tool call), part of the answer."""
        self.detokenizer = Detokenizer(tokenizer)
        self.stop, self.tools = stop, tools
        self.text = opening
        self.sent = 0  # characters of ``text`` released so far
        self.ids: list[int] = []  # every generated token, an end-of-sequence token included
        self.stopped = False  # an end-of-sequence token or a stop string ended it
        self.cut = False  # a stop string ended it: the text after it is dropped, not flushed
        self.finish_reason: str | None = None

    def push(self, token: int, eos: bool) -> str:
        """Take the next token; return the text that may now be released (possibly "")."""
        self.ids.append(token)
        if eos:
            self.stopped = True
            return ""
        self._append(self.detokenizer.push(token))
        return self._release(self._safe_end())

    @property
    def tokens(self) -> int:
        return len(self.ids)

    def finish(self, reason: str) -> tuple[str, list[dict], str]:
        """End the choice: the rest of its content, its tool calls and its finish_reason."""
        if not self.cut:  # release what the detokenizer still holds
            self._append(self.detokenizer.flush())
        if self.cut:
            reason = "stop"
        content, calls = parse_tool_calls(self.text) if self.tools else (self.text, [])
        content = content or ""
        # Everything released so far is a prefix of the final content (see _safe_end), so the stream adds up.
        rest = content[self.sent :] if content.startswith(self.text[: self.sent]) else ""
        self.finish_reason = "tool_calls" if calls and reason != "length" else reason
        return rest, calls, self.finish_reason

    def _append(self, piece: str) -> None:
        if not piece:
            return
        checked = max(0, len(self.text) - max((len(s) for s in self.stop), default=1) + 1)
        self.text += piece
        cuts = [i for i in (self.text.find(s, checked) for s in self.stop) if i >= 0]
        if cuts:
            self.text = self.text[: min(cuts)]
            self.stopped = self.cut = True

    def _safe_end(self) -> int:
        """How much of the text is final: not the start of a possible stop string, and with tools on, nothing from
        ``<tool_call>`` on and no trailing whitespace (content before a call loses it)."""
        text = self.text
        end = len(text) - max((_partial_suffix(text, s) for s in self.stop), default=0)
        if self.tools:
            opened = text.find(TOOL_CALL_OPEN, self.sent)
            end = min(end, opened if opened >= 0 else len(text) - _partial_suffix(text, TOOL_CALL_OPEN))
            end = len(text[:end].rstrip())
        return max(end, self.sent)

    def _release(self, end: int) -> str:
        piece, self.sent = self.text[self.sent : end], end
        return piece


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that is a proper beginning of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def finish_events(index: int, choice: Choice, reason: str) -> Iterator[dict]:
    """A choice's last events: the rest of its content, its tool calls as OpenAI streams them (per call, a delta
    with its id, type and name and empty arguments, then one with the arguments), and its finish_reason."""
    rest, calls, finish_reason = choice.finish(reason)
    if rest:
        yield {"index": index, "delta": {"content": rest}}
    for k, call in enumerate(calls):
        head = {"index": k, "id": call["id"], "type": call["type"],
                "function": {"name": call["function"]["name"], "arguments": ""}}
        yield {"index": index, "delta": {"tool_calls": [head]}}
        yield {"index": index, "delta": {"tool_calls": [{"index": k, "function": {
            "arguments": call["function"]["arguments"]}}]}}
    yield {"index": index, "delta": {}, "finish_reason": finish_reason}


class Answer:
    """A non-streamed answer, built from the same events a stream gets (so the two always agree)."""

    def __init__(self, n: int):
        self.choices = [{"index": i, "message": {"role": "assistant", "content": ""}, "finish_reason": None}
                        for i in range(n)]

    def add(self, event: dict) -> None:
        choice = self.choices[event["index"]]
        choice["message"]["content"] += event["delta"].get("content", "")
        for delta in event["delta"].get("tool_calls", []):  # a new call (with its id), or more of its arguments
            calls = choice["message"].setdefault("tool_calls", [])
            if "id" in delta:
                calls.append({k: v for k, v in delta.items() if k != "index"})
            else:
                calls[delta["index"]]["function"]["arguments"] += delta["function"]["arguments"]
        if event.get("finish_reason"):
            choice["finish_reason"] = event["finish_reason"]

    def result(self, usage: dict) -> dict:
        for choice in self.choices:
            if choice["message"].get("tool_calls") and not choice["message"]["content"]:
                choice["message"]["content"] = None
        return {"choices": self.choices, "usage": usage}
