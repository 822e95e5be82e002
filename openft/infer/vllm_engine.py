"""The GPU path: the same ``submit`` / ``step`` / ``cancel`` interface as ``openft.infer.engine.Engine``, with vLLM
(its ``AsyncLLMEngine``: continuous batching, paged KV cache, LoRA adapters loaded per request) doing the decoding.

Chosen by ``python -m openft.infer --backend vllm`` (``OPENFT_INFERENCE_BACKEND=vllm``, or ``auto`` on a machine with
CUDA and vLLM installed). Everything a client sees stays the same: prompts are rendered by ``openft.chatformat``
exactly as on the CPU path and handed to vLLM as token ids, and vLLM's tokens go through the same ``Choice``
machinery (stop strings, streaming release, tool-call parsing, enforced tool calls), so response shapes, finish
reasons and usage are built by the same code. An adapter is a ``LoRARequest`` named by its folder (checkpoints never
change, so the folder is the identity); vLLM loads it on first use and keeps at most ``max_loras`` on the GPU.

vLLM runs its asyncio loop in a thread of its own; ``step`` hands new requests to it and takes the tokens it has
produced since the last step. One vLLM engine per base model (a full fine-tune is a base of its own), at most
``max_bases`` at once, each given an equal share of GPU memory. Not supported here (a clear 400, not a silent
difference): models fine-tuned from an ``ft:`` model (their parents would need merging first).

This module is written against vLLM's documented API (``vllm.AsyncLLMEngine``, ``AsyncEngineArgs``,
``SamplingParams``, ``vllm.inputs.TokensPrompt``, ``vllm.lora.request.LoRARequest``); the suite's test for it runs
only where a GPU and vLLM are present.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from openft.chatformat import template_renders_tools, to_template_messages
from openft.errors import InvalidRequest
from openft.infer.request import ChatParams, parse_chat_request
from openft.infer.text import Answer, Choice, finish_events

DEFAULT_MAX_TOKENS = 1024


def available() -> bool:
    """Whether this machine can run the vLLM path (vLLM importable and a CUDA device present)."""
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


class VllmEngine:
    def __init__(self, *, max_bases: int = 1, default_max_tokens: int = DEFAULT_MAX_TOKENS, max_loras: int = 8,
                 max_lora_rank: int = 64, **_cpu_only_limits):
        self.max_bases, self.default_max_tokens = max_bases, default_max_tokens
        self.max_loras, self.max_lora_rank = max_loras, max_lora_rank
        self.on_load: Callable[[], None] = lambda: None
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._engines: dict[str, tuple[object, object, bool]] = {}  # base folder -> (engine, tokenizer, native)
        self._requests: dict[str, dict] = {}
        self._outputs: queue.Queue = queue.Queue()  # (rid, RequestOutput | Exception) from the vLLM thread

    # ---- the interface the worker drives ---------------------------------------------------------------------------

    def submit(self, rid: str, base: str, adapter: str | None, request: dict, emit: Callable[[dict], None],
               parents: Sequence[str] = ()) -> None:
        params = parse_chat_request(request)
        if parents:
            raise InvalidRequest("Models fine-tuned from another fine-tuned model are not served by the vLLM backend "
                                 "yet; use OPENFT_INFERENCE_BACKEND=cpu.", param="model", code="unsupported_model")
        engine, tokenizer, native = self._engine(base)
        prompt = self._prompt_ids(tokenizer, native, params)
        context = getattr(tokenizer, "model_max_length", None) or 1 << 30
        max_tokens = params.max_tokens or max(1, min(self.default_max_tokens, context - len(prompt)))
        choices = [Choice(tokenizer, params.stop, params.tools is not None, params.forced_call or "")
                   for _ in range(params.n)]
        eos = {tokenizer.eos_token_id}
        self._requests[rid] = {"emit": emit, "choices": choices, "seen": [0] * params.n, "eos": eos,
                               "prompt": len(prompt), "answer": None if params.stream else Answer(params.n),
                               "finish": {}, "max_tokens": max_tokens}
        sampling = self._sampling(params, max_tokens)
        lora = self._lora(adapter)
        asyncio.run_coroutine_threadsafe(self._generate(engine, rid, prompt, sampling, lora), self._loop)

    def busy(self) -> bool:
        return bool(self._requests)

    def cancel(self, rid: str) -> bool:
        if self._requests.pop(rid, None) is None:
            return False
        for engine, _, _ in self._engines.values():
            asyncio.run_coroutine_threadsafe(engine.abort(rid), self._loop)
        return True

    def abort(self) -> list[str]:
        rids = list(self._requests)
        for rid in rids:
            self.cancel(rid)
        return rids

    def step(self) -> None:
        """Take what vLLM produced since the last step (waiting briefly for something when nothing has come)."""
        try:
            items = [self._outputs.get(timeout=0.05)]
        except queue.Empty:
            return
        while True:
            try:
                items.append(self._outputs.get_nowait())
            except queue.Empty:
                break
        for rid, output in items:
            if rid in self._requests:
                self._take(rid, output)

    # ---- internals -----------------------------------------------------------------------------------------------

    def _take(self, rid: str, output) -> None:
        req = self._requests[rid]
        if isinstance(output, Exception):
            del self._requests[rid]
            req["emit"]({"ok": False, "error": {"message": f"Inference failed: {output}", "type": "server_error",
                                                "param": None, "code": None}})
            return
        for completion in output.outputs:
            index, choice = completion.index, req["choices"][completion.index]
            for token in list(completion.token_ids)[req["seen"][index]:]:
                if index in req["finish"]:
                    break
                self._push(req, index, choice, token)
            req["seen"][index] = len(completion.token_ids)
            if completion.finish_reason is not None and index not in req["finish"]:
                self._finish(req, index, choice, "length" if completion.finish_reason == "length" else "stop")
        if len(req["finish"]) == len(req["choices"]):
            del self._requests[rid]
            if output.finished is False:  # a stop string of ours ended every choice before vLLM did
                for engine, _, _ in self._engines.values():
                    asyncio.run_coroutine_threadsafe(engine.abort(rid), self._loop)
            self._done(req)

    def _push(self, req: dict, index: int, choice: Choice, token: int) -> None:
        text = choice.push(token, token in req["eos"])
        if text:
            self._event(req, {"index": index, "delta": {"content": text}})
        if choice.stopped or choice.tokens >= req["max_tokens"]:
            self._finish(req, index, choice, "stop" if choice.stopped else "length")

    def _finish(self, req: dict, index: int, choice: Choice, reason: str) -> None:
        req["finish"][index] = reason
        for event in finish_events(index, choice, reason):
            self._event(req, event)

    def _event(self, req: dict, event: dict) -> None:
        if req["answer"] is None:
            req["emit"](event)
        else:
            req["answer"].add(event)

    def _done(self, req: dict) -> None:
        completion = sum(choice.tokens for choice in req["choices"])
        usage = {"prompt_tokens": req["prompt"], "completion_tokens": completion,
                 "total_tokens": req["prompt"] + completion}
        if req["answer"] is None:
            req["emit"]({"done": True, "finish_reason": req["choices"][0].finish_reason, "usage": usage})
        else:
            req["emit"]({"ok": True, "result": req["answer"].result(usage)})

    async def _generate(self, engine, rid: str, prompt: list[int], sampling, lora) -> None:
        from vllm.inputs import TokensPrompt

        try:
            async for output in engine.generate(TokensPrompt(prompt_token_ids=prompt), sampling, rid,
                                                lora_request=lora):
                self._outputs.put((rid, output))
        except Exception as exc:  # noqa: BLE001 - reported to the request, the engine keeps serving
            self._outputs.put((rid, exc))

    def _engine(self, base: str):
        folder = str(Path(base).resolve())
        if folder in self._engines:
            return self._engines[folder]
        if not (Path(folder) / "config.json").is_file():
            raise InvalidRequest(f"Model files not found: {base}", param="model", code="model_not_found")
        if len(self._engines) >= self.max_bases:
            raise InvalidRequest("The vLLM backend serves at most OPENFT_INFERENCE_MAX_BASES base models at once.",
                                 param="model", code="model_capacity")
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.on_load()
        args = AsyncEngineArgs(model=folder, enable_lora=True, max_loras=self.max_loras,
                               max_lora_rank=self.max_lora_rank, gpu_memory_utilization=0.85 / self.max_bases)
        engine = AsyncLLMEngine.from_engine_args(args)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        native = template_renders_tools(tokenizer) if tokenizer.chat_template else False
        self._engines[folder] = (engine, tokenizer, native)
        return self._engines[folder]

    @staticmethod
    def _prompt_ids(tokenizer, native: bool, params: ChatParams) -> list[int]:
        messages, tools = to_template_messages({"messages": params.messages, "tools": params.tools},
                                               native_tools=native)
        try:
            text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        except Exception as exc:
            raise InvalidRequest(f"The model's chat template cannot render these messages: {exc}",
                                 param="messages") from exc
        if params.forced_call:
            if native:
                raise InvalidRequest("tool_choice 'required' or a named function cannot be enforced for this model "
                                     "(its chat template has its own tool-call format); use 'auto'.",
                                     param="tool_choice", code="unsupported_parameter")
            text += params.forced_call
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _sampling(params: ChatParams, max_tokens: int):
        from vllm import SamplingParams

        # Stop strings are applied by Choice (as on the CPU path); vLLM stops at EOS and the token bound.
        return SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p if params.top_p > 0
                              else 1e-9, max_tokens=max_tokens,
                              seed=params.seed if params.seed is not None else secrets.randbits(63),
                              skip_special_tokens=True)

    @staticmethod
    def _lora(adapter: str | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        folder = str(Path(adapter).resolve())
        if not (Path(folder) / "adapter_config.json").is_file():
            raise InvalidRequest(f"Adapter files not found: {adapter}", param="model", code="model_not_found")
        # vLLM names adapters by a positive integer; a stable one from the folder path (checkpoints never change).
        return LoRARequest(folder, zlib.crc32(folder.encode()) % (2**31 - 1) + 1, folder)
