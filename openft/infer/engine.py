"""Chat completions from base models and LoRA fine-tunes of them, many requests at once: the loaded models and their
memory, prompt rendering, admission into the running batches, and the events each request produces.

Models. A model is ``(base, adapter)``: a local Hugging Face folder and a PEFT LoRA adapter folder (or None for
the base itself). A base loads once and is shared by all its adapters: the first adapter wraps it in a
``PeftModel`` and later ones are added with ``load_adapter``; each row of a batch names its adapter. At most
``max_bases`` bases stay loaded and the adapters together stay within ``max_adapter_bytes`` (least recently used
first out; a base or adapter that a running request uses is never evicted, so one adapter larger than the bound still
works). An adapter is cached by its folder path: checkpoints never change. A full fine-tune is a base of its own.

Prompt. Messages and tools go through the model's chat template exactly as training renders them
(``openft.chatformat``), so a model answers in the format it was tuned on.

Batching. ``submit`` checks a request and queues it; each ``step`` admits queued requests that fit (at most
``max_batch_rows`` rows and ``max_batch_tokens`` tokens of prompt + completion budget over all running requests;
a request is admitted alone whatever its size when nothing runs, so none waits forever) and then runs one decode step
of every base's ``Batch`` (``openft.infer.batch``): one forward pass for all rows of that base. A request's ``n``
choices are ``n`` rows. ``cancel`` takes a request out at once. A choice ends at an end-of-sequence token or a stop
string (finish_reason "stop"), or at its token bound ("length"): ``max_tokens`` when given, else
``default_max_tokens``, never past the model's context.

Events go to the ``emit`` callback given with each request, as the worker sends them: stream items
``{"index", "delta"[, "finish_reason"]}`` then ``{"done", "finish_reason", "usage"}``; for a non-streamed request one
``{"ok": True, "result"}``; and ``{"ok": False, "error"}`` for a request that fails after it was queued.

Not thread-safe: one thread calls ``submit``, ``step`` and ``cancel``.
"""

from __future__ import annotations

import gc
import hashlib
import secrets
import traceback
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from openft.chatformat import template_renders_tools, to_template_messages
from openft.errors import InvalidRequest
from openft.infer.batch import Batch, Group
from openft.infer.request import ChatParams, parse_chat_request
from openft.infer.text import Answer, Choice, finish_events

DEFAULT_MAX_ADAPTER_BYTES = 1 << 30
DEFAULT_MAX_BASES = 2
DEFAULT_MAX_TOKENS = 1024
DEFAULT_MAX_BATCH_ROWS = 32
DEFAULT_MAX_BATCH_TOKENS = 65536


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


@dataclass(eq=False)
class _Request:
    rid: str
    base: str
    adapter: str | None
    parents: tuple[str, ...]
    params: ChatParams
    emit: Callable[[dict], None]
    prompt: list[int] | None = None  # given for raw token requests (generate_ids); else rendered at admission
    group: Group | None = None
    key: str = ""
    answer: Answer | None = None  # a non-streamed request's message, built from its events


def _base_key(path: str, parents: Sequence[str]) -> str:
    return "\n".join([str(Path(path).resolve()), *(str(Path(p).resolve()) for p in parents)])


class Engine:
    def __init__(self, *, max_adapter_bytes: int = DEFAULT_MAX_ADAPTER_BYTES, max_bases: int = DEFAULT_MAX_BASES,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS, max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, device: str | None = None):
        hf_logging.disable_progress_bar()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.max_adapter_bytes, self.max_bases = max_adapter_bytes, max_bases
        self.default_max_tokens, self.max_batch_rows, self.max_batch_tokens = (
            default_max_tokens, max_batch_rows, max_batch_tokens)
        self._bases: OrderedDict[str, _Base] = OrderedDict()  # by base key, least recently used first
        self._adapters: OrderedDict[tuple[str, str], int] = OrderedDict()  # (base, adapter name) -> bytes, LRU first
        self._in_use: Counter[tuple[str, str]] = Counter()  # adapters of running requests: never evicted
        self._batches: dict[str, Batch] = {}  # base key -> its running rows
        self._waiting: list[_Request] = []  # submitted, not yet admitted (first come, first served)
        self._running: dict[str, _Request] = {}
        self.on_load: Callable[[], None] = lambda: None  # called before a model loads from disk (it may take long)

    # ---- the batching loop -----------------------------------------------------------------------------------------

    def submit(self, rid: str, base: str, adapter: str | None, request: dict, emit: Callable[[dict], None],
               parents: Sequence[str] = ()) -> None:
        """Queue a chat request; its events go to ``emit``. A bad request raises ``InvalidRequest`` here."""
        params = parse_chat_request(request)
        self._queue(_Request(rid, base, adapter, tuple(parents), params, emit,
                             answer=None if params.stream else Answer(params.n)))

    def busy(self) -> bool:
        return bool(self._waiting or self._running)

    def cancel(self, rid: str) -> bool:
        """Stop request ``rid`` at once (its rows leave the batch); False if it is not queued or running."""
        for req in self._waiting:
            if req.rid == rid:
                self._waiting.remove(req)
                return True
        req = self._running.pop(rid, None)
        if req is None:
            return False
        self._batches[req.key].drop(req.group)
        self._release(req)
        return True

    def abort(self) -> list[str]:
        """Drop every running request (after a failed step); returns their ids. Waiting requests stay queued."""
        rids = list(self._running)
        for req in self._running.values():
            self._release(req)
        self._running.clear()
        self._batches.clear()
        return rids

    def step(self) -> None:
        """Admit what fits, then one decode step of every running batch."""
        while self._waiting and self._admit(self._waiting[0]):
            self._waiting.pop(0)
        for batch in list(self._batches.values()):
            drawn = batch.step()
            for group, index, token in drawn:
                self._push(self._running[group.rid], index, token)
            batch.advance(drawn)
            for group in {g for g, _, _ in drawn if g.done}:
                self._done(self._running.pop(group.rid))

    def _queue(self, req: _Request) -> None:
        self._waiting.append(req)

    def _admit(self, req: _Request) -> bool:
        """Start ``req`` if it fits now (True), or leave it waiting (False); a failure is emitted (True)."""
        key = _base_key(req.base, req.parents)
        running = list(self._running.values())
        if key not in self._bases and len(self._bases) >= self.max_bases and all(
                self._batches.get(k) and self._batches[k].rows for k in self._bases):
            return False  # every loaded base is serving requests: wait for one to drain
        try:
            base = self._base(req.base, req.parents)
            prompt = req.prompt if req.prompt is not None else self._prompt_ids(base, req.params)
            max_tokens = self._max_tokens(base, len(prompt), req.params.max_tokens)
            cost = req.params.n * (len(prompt) + max_tokens)
            rows = sum(len(r.group.choices) for r in running)
            if running and (rows + req.params.n > self.max_batch_rows
                            or sum(r.group.cost for r in running) + cost > self.max_batch_tokens):
                return False
            name = None
            if req.adapter is not None:
                name = _adapter_name(req.adapter)
                if (key, name) not in self._adapters:
                    self._load_adapter(key, base, req.adapter, name)
                self._adapters.move_to_end((key, name))
                self._in_use[(key, name)] += 1
        except InvalidRequest as exc:
            req.emit(_error(exc.message, "invalid_request_error", exc.param, exc.code))
            return True
        except Exception as exc:  # noqa: BLE001 - e.g. unreadable weights: this request fails, the others run on
            traceback.print_exc()
            req.emit(_error(f"Inference failed: {type(exc).__name__}: {exc}", "server_error"))
            return True
        choices = [Choice(base.tokenizer, req.params.stop, req.params.tools is not None, req.params.forced_call or "")
                   for _ in range(req.params.n)]
        req.key = key
        req.group = Group(req.rid, name, prompt, choices, max_tokens, req.params.temperature, req.params.top_p,
                          self._generator(req.params.seed), cost)
        self._running[req.rid] = req
        self._batches.setdefault(key, Batch(base)).join(req.group)
        return True

    def _push(self, req: _Request, index: int, token: int) -> None:
        group, choice = req.group, req.group.choices[index]
        text = choice.push(token, token in self._bases[req.key].eos_ids)
        if text:
            self._event(req, {"index": index, "delta": {"content": text}})
        if choice.stopped or choice.tokens >= group.max_tokens:
            group.finish[index] = "stop" if choice.stopped else "length"
            for event in finish_events(index, choice, group.finish[index]):
                self._event(req, event)

    def _done(self, req: _Request) -> None:
        self._release(req)
        choices, prompt = req.group.choices, len(req.group.prompt)
        completion = sum(choice.tokens for choice in choices)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        done = {"done": True, "finish_reason": choices[0].finish_reason, "usage": usage}
        if req.answer is None:
            req.emit(done)
        else:
            req.emit({"ok": True, "result": req.answer.result(usage)})

    def _event(self, req: _Request, event: dict) -> None:
        if req.answer is None:
            req.emit(event)
        else:
            req.answer.add(event)

    def _release(self, req: _Request) -> None:
        if req.group is not None and req.group.adapter is not None:
            self._in_use[(req.key, req.group.adapter)] -= 1
        batch = self._batches.get(req.key)
        if batch is not None and not batch.rows:
            del self._batches[req.key]

    # ---- one request at a time (tests, tools) --------------------------------------------------------------------

    def chat(self, base: str, adapter: str | None, request: dict,
             cancelled: Callable[[], bool] | None = None, parents: Sequence[str] = ()) -> dict:
        """A non-streamed chat completion: ``{"choices": [{index, message, finish_reason}], "usage": {...}}``."""
        events = list(self._run(base, adapter, {**request, "stream": False}, cancelled, parents))
        return events[-1]["result"]

    def chat_stream(self, base: str, adapter: str | None, request: dict,
                    cancelled: Callable[[], bool] | None = None, parents: Sequence[str] = ()) -> Iterator[dict]:
        """A streamed chat completion. Yields ``{"index", "delta": {"content": str} | {"tool_calls": [...]} | {}}``
        items (a choice's last item also has ``finish_reason``), then ``{"done": True, "finish_reason"
        (of choice 0), "usage"}``. A bad request raises ``InvalidRequest`` at the first ``next()``, before any item.
        ``cancelled`` is polled once per step; when it returns True, ``Cancelled`` is raised. ``parents``: adapters
        merged into the base first (the lineage of a model fine-tuned from an ``ft:`` model), oldest first."""
        yield from self._run(base, adapter, {**request, "stream": True}, cancelled, parents)

    def generate_ids(self, base: str, adapter: str | None, prompt_ids: list[int], *, max_tokens: int,
                     temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, n: int = 1
                     ) -> list[list[int]]:
        """Token ids of ``n`` completions of ``prompt_ids``, each ending at (and including) an end-of-sequence token
        or after ``max_tokens`` tokens. The same loop as ``chat``, without text."""
        params = parse_chat_request({"messages": [{"role": "user", "content": ""}], "max_tokens": max_tokens,
                                     "temperature": temperature, "top_p": top_p, "seed": seed, "n": n})
        out: list[dict] = []
        req = _Request(secrets.token_hex(8), base, adapter, (), params, out.append, prompt=list(prompt_ids),
                       answer=Answer(n))
        self._queue(req)
        while not out:
            self.step()
        if not out[0]["ok"]:
            raise InvalidRequest(out[0]["error"]["message"], param=out[0]["error"]["param"])
        return [choice.ids for choice in req.group.choices]

    def _run(self, base, adapter, request, cancelled, parents) -> Iterator[dict]:
        rid, out = secrets.token_hex(8), []
        self.submit(rid, base, adapter, request, out.append, parents)
        try:
            while True:
                self.step()
                for event in out:
                    if event.get("ok") is False:
                        error = event["error"]
                        raise InvalidRequest(error["message"], param=error["param"], code=error["code"])
                    yield event
                    if "ok" in event or event.get("done"):
                        return
                out.clear()
                if cancelled is not None and cancelled():
                    raise Cancelled()
        finally:
            self.cancel(rid)

    def prompt_ids(self, base: str, request: dict) -> list[int]:
        """The token ids the model sees for a chat request (its messages and tools, through the chat template)."""
        return self._prompt_ids(self._base(base), parse_chat_request(request))

    def loaded(self) -> dict:
        """What is in memory: ``{"bases": [path, ...], "adapters": [[base, adapter name, bytes], ...]}``, LRU first."""
        return {"bases": list(self._bases), "adapters": [[b, a, size] for (b, a), size in self._adapters.items()]}

    def _prompt_ids(self, base: _Base, params: ChatParams) -> list[int]:
        messages, tools = to_template_messages({"messages": params.messages, "tools": params.tools},
                                               native_tools=base.native_tools)
        try:
            text = base.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja's TemplateError (e.g. a template's raise_exception), or no template at all
            raise InvalidRequest(f"The model's chat template cannot render these messages: {exc}",
                                 param="messages") from exc
        if params.forced_call:
            if base.native_tools:  # its own call format is not one this server can open for it
                raise InvalidRequest("tool_choice 'required' or a named function cannot be enforced for this model "
                                     "(its chat template has its own tool-call format); use 'auto'.",
                                     param="tool_choice", code="unsupported_parameter")
            text += params.forced_call
        return base.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _max_tokens(self, base: _Base, prompt_tokens: int, requested: int | None) -> int:
        room = base.context - prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            total = prompt_tokens + (requested or 1)
            raise InvalidRequest(
                f"This model's maximum context length is {base.context} tokens. However, you requested {total} "
                f"tokens ({prompt_tokens} in the messages, {requested or 1} in the completion). Please reduce the "
                "length of the messages or completion.", param="messages", code="context_length_exceeded")
        return requested if requested is not None else min(room, self.default_max_tokens)

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(secrets.randbits(63) if seed is None else seed)
        return generator

    # ---- models --------------------------------------------------------------------------------------------------

    def _base(self, path: str, parents: Sequence[str] = ()) -> _Base:
        """The base model at ``path`` with ``parents`` merged in (a base of its own in the cache), loaded once."""
        key = _base_key(path, parents)
        if key in self._bases:
            self._bases.move_to_end(key)
            return self._bases[key]
        folder = str(Path(path).resolve())
        self.on_load()
        if not (Path(folder) / "config.json").is_file():
            raise InvalidRequest(f"Model files not found: {path}", param="model", code="model_not_found")
        for parent in parents:
            if not (Path(parent) / "adapter_config.json").is_file():
                raise InvalidRequest(f"Adapter files not found: {parent}", param="model", code="model_not_found")
        while len(self._bases) >= self.max_bases:  # make room before loading (the caller checked that it can)
            old = next(k for k in self._bases if not self._batches.get(k) or not self._batches[k].rows)
            del self._bases[old]
            self._batches.pop(old, None)
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
        self.on_load()
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
        base.peft.base_model.enable_adapter_layers()  # rows pick their adapter by name; none is "active"
        # Evict least recently used adapters (never one a running request uses) until the rest fit.
        while sum(self._adapters.values()) > self.max_adapter_bytes:
            idle = [entry for entry in self._adapters if entry != (key, name) and not self._in_use[entry]]
            if not idle:
                break
            old_key, old_name = idle[0]
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


def _error(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"ok": False, "error": {"message": message, "type": type_, "param": param, "code": code}}
