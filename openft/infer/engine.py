"""Chat completions from a base model or a LoRA fine-tune of it: prompt rendering, the decoding loop, sampling,
stop strings, tool calls and streaming. Owns the loaded models and their memory.

Models. A model is ``(base, adapter)``: a local Hugging Face folder and a PEFT LoRA adapter folder (or None for
the base itself). A base loads once and is shared by all its adapters: the first adapter wraps it in a
``PeftModel`` and later ones are added with ``load_adapter``; a request selects its adapter with ``set_adapter``, or
turns the LoRA layers off for the base. At most ``max_bases`` bases stay loaded and the adapters together stay within
``max_adapter_bytes`` (both least recently used first out; the adapter a request is using is never evicted, so one
adapter larger than the bound still works). An adapter is cached by its folder path: checkpoints never change.

Prompt. Messages and tools go through the model's chat template exactly as training renders them
(``openft.chatformat``): natively where the template supports tools, otherwise as the Hermes
system block that training uses (tool definitions as JSON inside ``<tools>…</tools>``, calls as
``<tool_call>{"name": …, "arguments": {…}}</tool_call>``), so a model answers in the format it was tuned on.

Decoding. A plain loop over the model's own forward with a KV cache: prefill the prompt once, copy the cache for
``n`` choices, then one token per step for all choices together. Greedy (temperature 0) takes the argmax, which is
what ``model.generate(do_sample=False)`` does, token for token. Sampling scales by temperature, keeps the top-p
nucleus and draws from a ``torch.Generator`` seeded by ``seed`` (or at random), so a seed repeats a result without
touching torch's global RNG. fp32 on CPU, bf16 on a GPU. A choice ends at an end-of-sequence token or a stop string
(finish_reason "stop"; the text is cut before the stop string), or at ``max_tokens`` ("length").

Streaming. Text is detokenised incrementally and a piece is released only once it is final: never half a multi-byte
character, never the start of what may become a stop string, and, when tools are on, nothing from ``<tool_call>`` on
(calls are sent whole when the choice ends, as one ``tool_calls`` delta). ``chat`` is built from the same events,
so a stream always adds up to the non-streamed message.

Not thread-safe: one request at a time (the worker serialises them).
"""

from __future__ import annotations

import gc
import hashlib
import secrets
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from openft.chatformat import TOOL_CALL_OPEN, parse_tool_calls, template_renders_tools, to_template_messages
from openft.errors import InvalidRequest
from openft.infer.request import ChatParams, parse_chat_request

DEFAULT_MAX_ADAPTER_BYTES = 1 << 30
DEFAULT_MAX_BASES = 2


class Cancelled(Exception):
    """The caller asked to stop a generation in progress."""


@dataclass
class _Base:
    model: torch.nn.Module  # the transformers model; LoRA layers are injected into it once an adapter is loaded
    tokenizer: object
    eos_ids: frozenset[int]
    context: int  # the longest sequence (prompt + completion) the model takes
    native_tools: bool
    peft: PeftModel | None = None


def _base_key(path: str, parents: Sequence[str]) -> str:
    return "\n".join([str(Path(path).resolve()), *(str(Path(p).resolve()) for p in parents)])


class Engine:
    def __init__(self, *, max_adapter_bytes: int = DEFAULT_MAX_ADAPTER_BYTES, max_bases: int = DEFAULT_MAX_BASES,
                 device: str | None = None):
        hf_logging.disable_progress_bar()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.max_adapter_bytes, self.max_bases = max_adapter_bytes, max_bases
        self._bases: OrderedDict[str, _Base] = OrderedDict()  # by resolved path, least recently used first
        self._adapters: OrderedDict[tuple[str, str], int] = OrderedDict()  # (base, adapter name) -> bytes, LRU first

    # ---- requests ------------------------------------------------------------------------------------------------

    def chat(self, base: str, adapter: str | None, request: dict,
             cancelled: Callable[[], bool] | None = None, parents: Sequence[str] = ()) -> dict:
        """A non-streamed chat completion: ``{"choices": [{index, message, finish_reason}], "usage": {...}}``."""
        params = parse_chat_request(request)
        choices = [{"index": i, "message": {"role": "assistant", "content": ""}, "finish_reason": None}
                   for i in range(params.n)]
        usage = None
        for event in self._events(base, adapter, params, cancelled, parents):
            if event.get("done"):
                usage = event["usage"]
                continue
            choice = choices[event["index"]]
            choice["message"]["content"] += event["delta"].get("content", "")
            if "tool_calls" in event["delta"]:
                calls = [{k: v for k, v in call.items() if k != "index"} for call in event["delta"]["tool_calls"]]
                choice["message"]["tool_calls"] = calls
            if event.get("finish_reason"):
                choice["finish_reason"] = event["finish_reason"]
        for choice in choices:
            if choice["message"].get("tool_calls") and not choice["message"]["content"]:
                choice["message"]["content"] = None
        return {"choices": choices, "usage": usage}

    def chat_stream(self, base: str, adapter: str | None, request: dict,
                    cancelled: Callable[[], bool] | None = None, parents: Sequence[str] = ()) -> Iterator[dict]:
        """A streamed chat completion. Yields ``{"index", "delta": {"content": str} | {"tool_calls": [...]} | {}}``
        items (a choice's last item also has ``finish_reason``), then ``{"done": True, "finish_reason"
        (of choice 0), "usage"}``. A bad request raises ``InvalidRequest`` at the first ``next()``, before any item.
        ``cancelled`` is polled once per token; when it returns True, ``Cancelled`` is raised. ``parents``: adapters
        merged into the base first (the lineage of a model fine-tuned from an ``ft:`` model), oldest first."""
        params = parse_chat_request(request)
        yield from self._events(base, adapter, params, cancelled, parents)

    def generate_ids(self, base: str, adapter: str | None, prompt_ids: list[int], *, max_tokens: int,
                     temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, n: int = 1
                     ) -> list[list[int]]:
        """Token ids of ``n`` completions of ``prompt_ids``, each ending at (and including) an end-of-sequence token
        or after ``max_tokens`` tokens. The same loop as ``chat``, without text."""
        b = self._select(base, adapter)
        out: list[list[int]] = [[] for _ in range(n)]
        steps = _decode(b.model, prompt_ids, n, max_tokens, temperature, top_p, self._generator(seed))
        for tokens in steps:
            for ids, token in zip(out, tokens):
                if not ids or ids[-1] not in b.eos_ids:
                    ids.append(token)
            if all(ids[-1] in b.eos_ids for ids in out):
                break
        steps.close()
        return out

    def prompt_ids(self, base: str, request: dict) -> list[int]:
        """The token ids the model sees for a chat request (its messages and tools, through the chat template)."""
        return self._prompt_ids(self._base(base), parse_chat_request(request))

    def loaded(self) -> dict:
        """What is in memory: ``{"bases": [path, ...], "adapters": [[base, adapter name, bytes], ...]}``, LRU first."""
        return {"bases": list(self._bases), "adapters": [[b, a, size] for (b, a), size in self._adapters.items()]}

    def _events(self, base_path: str, adapter_path: str | None, params: ChatParams,
                cancelled: Callable[[], bool] | None, parents: Sequence[str] = ()) -> Iterator[dict]:
        base = self._select(base_path, adapter_path, parents)
        prompt = self._prompt_ids(base, params)
        max_tokens = self._max_tokens(base, len(prompt), params.max_tokens)
        choices = [_Choice(base.tokenizer, params.stop, params.tools is not None) for _ in range(params.n)]
        steps = _decode(base.model, prompt, params.n, max_tokens, params.temperature, params.top_p,
                        self._generator(params.seed))
        try:
            for tokens in steps:
                for index, (choice, token) in enumerate(zip(choices, tokens)):
                    if choice.finish_reason is not None:
                        continue
                    text = choice.push(token, token in base.eos_ids)
                    if text:
                        yield {"index": index, "delta": {"content": text}}
                    if choice.stopped:
                        yield from _finish(index, choice, "stop")
                if all(choice.finish_reason is not None for choice in choices):
                    break
                if cancelled is not None and cancelled():
                    raise Cancelled()
        finally:
            steps.close()
        for index, choice in enumerate(choices):
            if choice.finish_reason is None:
                yield from _finish(index, choice, "length")
        completion = sum(choice.tokens for choice in choices)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": completion,
                 "total_tokens": len(prompt) + completion}
        yield {"done": True, "finish_reason": choices[0].finish_reason, "usage": usage}

    def _prompt_ids(self, base: _Base, params: ChatParams) -> list[int]:
        messages, tools = to_template_messages({"messages": params.messages, "tools": params.tools},
                                               native_tools=base.native_tools)
        try:
            text = base.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja's TemplateError (e.g. a template's raise_exception), or no template at all
            raise InvalidRequest(f"The model's chat template cannot render these messages: {exc}",
                                 param="messages") from exc
        return base.tokenizer(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _max_tokens(base: _Base, prompt_tokens: int, requested: int | None) -> int:
        room = base.context - prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            total = prompt_tokens + (requested or 1)
            raise InvalidRequest(
                f"This model's maximum context length is {base.context} tokens. However, you requested {total} "
                f"tokens ({prompt_tokens} in the messages, {requested or 1} in the completion). Please reduce the "
                "length of the messages or completion.", param="messages", code="context_length_exceeded")
        return requested if requested is not None else room

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(secrets.randbits(63) if seed is None else seed)
        return generator

    # ---- models --------------------------------------------------------------------------------------------------

    def _select(self, base_path: str, adapter_path: str | None, parents: Sequence[str] = ()) -> _Base:
        """The base of the request, with its LoRA layers set to ``adapter_path`` (loaded if needed) or off."""
        key = _base_key(base_path, parents)
        base = self._base(base_path, parents)
        if adapter_path is None:
            if base.peft is not None:
                base.peft.base_model.disable_adapter_layers()
            return base
        name = _adapter_name(adapter_path)
        if (key, name) not in self._adapters:
            self._load_adapter(key, base, adapter_path, name)
        self._adapters.move_to_end((key, name))
        base.peft.base_model.enable_adapter_layers()
        base.peft.set_adapter(name, inference_mode=True)
        return base

    def _base(self, path: str, parents: Sequence[str] = ()) -> _Base:
        """The base model at ``path`` with ``parents`` merged in (a base of its own in the cache), loaded once."""
        key = _base_key(path, parents)
        if key in self._bases:
            self._bases.move_to_end(key)
            return self._bases[key]
        folder = str(Path(path).resolve())
        if not (Path(folder) / "config.json").is_file():
            raise InvalidRequest(f"Model files not found: {path}", param="model", code="model_not_found")
        for parent in parents:
            if not (Path(parent) / "adapter_config.json").is_file():
                raise InvalidRequest(f"Adapter files not found: {parent}", param="model", code="model_not_found")
        while len(self._bases) >= self.max_bases:  # make room before loading
            old, _ = self._bases.popitem(last=False)
            for entry in [entry for entry in self._adapters if entry[0] == old]:
                del self._adapters[entry]
            self._release_memory()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for parent in parents:  # merged in fp32, as training merged them
                model = PeftModel.from_pretrained(model, parent).merge_and_unload()
        model = model.to(self.device, self.dtype).eval()
        eos = model.generation_config.eos_token_id
        eos_ids = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
        context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
        base = _Base(model, tokenizer, frozenset(i for i in eos_ids if i is not None), context,
                     template_renders_tools(tokenizer) if tokenizer.chat_template else False)
        self._bases[key] = base
        return base

    def _load_adapter(self, key: str, base: _Base, path: str, name: str) -> None:
        if not (Path(path) / "adapter_config.json").is_file():
            raise InvalidRequest(f"Adapter files not found: {path}", param="model", code="model_not_found")
        with warnings.catch_warnings():  # a transformers deprecation that PEFT trips over; nothing to act on
            warnings.simplefilter("ignore", FutureWarning)
            if base.peft is None:
                base.peft = PeftModel.from_pretrained(base.model, path, adapter_name=name, is_trainable=False)
            else:
                base.peft.load_adapter(path, adapter_name=name, is_trainable=False)
        base.peft.eval()
        size = sum(p.numel() * p.element_size() for n, p in base.model.named_parameters() if name in n.split("."))
        self._adapters[(key, name)] = size
        # Evict least recently used adapters (never this one) until the rest fit.
        while sum(self._adapters.values()) > self.max_adapter_bytes and len(self._adapters) > 1:
            old_key, old_name = next(iter(self._adapters))
            del self._adapters[(old_key, old_name)]
            old = self._bases[old_key]
            with warnings.catch_warnings():  # "was active, now deleted": every request sets its adapter anyway
                warnings.simplefilter("ignore", UserWarning)
                old.peft.delete_adapter(old_name)
            if not old.peft.peft_config:  # its last adapter: give the base back its plain layers
                old.model, old.peft = old.peft.unload(), None
            self._release_memory()

    def _release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _adapter_name(path: str) -> str:
    # PEFT names become module keys: no dots, so a digest of the folder's absolute path.
    return "a" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]


@torch.inference_mode()
def _decode(model, prompt: list[int], n: int, max_tokens: int, temperature: float, top_p: float,
            generator: torch.Generator) -> Iterator[list[int]]:
    """Yield the next token of each of the ``n`` choices, ``max_tokens`` times (the caller stops early)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    mask = torch.ones_like(ids)
    out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
    cache, logits = out.cache, out.logits[:, -1].float()
    if n > 1:  # the prompt is computed once; every choice continues from a copy of its cache
        cache.batch_repeat_interleave(n)
        logits, mask = logits.expand(n, -1), mask.expand(n, -1)
    for step in range(max_tokens):
        tokens = _pick(logits, temperature, top_p, generator)
        yield tokens.tolist()
        if step + 1 == max_tokens:
            return
        mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1].float()


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        # Keep the smallest set of most likely tokens whose mass reaches top_p (always at least the top one).
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        outside[..., 0] = False
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class _Detokenizer:
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


class _Choice:
    """One choice's text: stop strings, what may be released to a stream, and the final message."""

    def __init__(self, tokenizer, stop: tuple[str, ...], tools: bool):
        self.detokenizer = _Detokenizer(tokenizer)
        self.stop, self.tools = stop, tools
        self.text = ""
        self.sent = 0  # characters of ``text`` released so far
        self.tokens = 0
        self.stopped = False  # an end-of-sequence token or a stop string ended it
        self.cut = False  # a stop string ended it: the text after it is dropped, not flushed
        self.finish_reason: str | None = None

    def push(self, token: int, eos: bool) -> str:
        """Take the next token; return the text that may now be released (possibly "")."""
        self.tokens += 1
        if eos:
            self.stopped = True
            return ""
        self._append(self.detokenizer.push(token))
        return self._release(self._safe_end())

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


def _finish(index: int, choice: _Choice, reason: str) -> Iterator[dict]:
    rest, calls, finish_reason = choice.finish(reason)
    if rest:
        yield {"index": index, "delta": {"content": rest}}
    if calls:
        yield {"index": index, "delta": {"tool_calls": [{"index": k, **call} for k, call in enumerate(calls)]}}
    yield {"index": index, "delta": {}, "finish_reason": finish_reason}
