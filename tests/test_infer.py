"""Sampling base and fine-tuned models (openft.infer) and exporting them (openft.export), on the tiny model.

The tiny test model's weights are scaled up here so that its greedy output varies from token to token (the stock
one repeats a single token), and its LoRA adapters are made with PEFT directly, with random non-zero B weights, so
they change the output. The worker is a real subprocess driven through the real client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

# Before torch runs its first parallel region: idle OpenMP threads sleep rather than spin. On the 2-core machines
# that run these tests beside other work, spinning made decoding several times slower (as for the trainer).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from openft import jobdir  # noqa: E402
from openft.errors import InvalidRequest  # noqa: E402
from openft.export import export_archive, export_model  # noqa: E402
from openft.infer.client import InferenceClient, InferenceError  # noqa: E402
from openft.infer.engine import Engine  # noqa: E402
from openft.infer.lora import Stacks  # noqa: E402
from openft.infer.text import Answer, finish_events  # noqa: E402
from openft.infer.text import Choice as _Choice  # noqa: E402
from openft.infer.text import Detokenizer as _Detokenizer  # noqa: E402
from openft.chatformat import parse_tool_calls  # noqa: E402
from tests.tinymodel import CHAT_TEMPLATE, build_tiny_model  # noqa: E402

# PEFT, used directly below to make adapters, trips over a transformers deprecation; nothing for us to act on.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

REPO = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                                  "parameters": {"type": "object",
                                                                 "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("infer")
    tiny = build_tiny_model(root / "tiny")
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger weights: a varied greedy output instead of one token repeated
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    model.save_pretrained(root / "base")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(root / "base")
    paths = {"tiny": tiny, "base": root / "base"}
    configs = {f"adapter{seed}": {} for seed in (1, 2, 3, 4)}
    configs.update({  # others than the trainer writes, for mixed batches of different shapes
        "rank2": {"r": 2, "lora_alpha": 16},
        "qv_rslora": {"r": 8, "lora_alpha": 4, "use_rslora": True, "target_modules": ["q_proj", "v_proj"]},
        "embedding": {"target_modules": ["embed_tokens", "v_proj"]}, "dora": {"use_dora": True}})
    for seed, (name, config) in enumerate(configs.items(), start=1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"), LoraConfig(**{
                "r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": False,  # B not zero
                **config}))
        paths[name] = root / name
        peft_model.save_pretrained(paths[name])
        AutoTokenizer.from_pretrained(tiny).save_pretrained(paths[name])  # as the trainer does
    MODELS.update(paths)
    return paths


MODELS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def reference_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, len(prompt_ids):].tolist()


def chat(engine, models, adapter=None, **request):
    return engine.chat(str(models["base"]), adapter and str(models[adapter]), {"messages": QUESTION, **request})


def streamed(engine, models, adapter=None, **request) -> tuple[dict[int, str], dict[int, str], dict]:
    texts, finish, done = {}, {}, None
    base, adapter_path = str(models["base"]), adapter and str(models[adapter])
    for event in engine.chat_stream(base, adapter_path, {"messages": QUESTION, **request}):
        if event.get("done"):
            done = event
            continue
        texts[event["index"]] = texts.get(event["index"], "") + event["delta"].get("content", "")
        if event.get("finish_reason"):
            finish[event["index"]] = event["finish_reason"]
    return texts, finish, done


# ---- greedy decoding is exactly transformers' generate ---------------------------------------------------------------


def test_greedy_on_the_base_equals_transformers_generate(engine, models):
    prompt = engine.prompt_ids(str(models["base"]), {"messages": QUESTION})
    reference = reference_greedy(models["base"], prompt, 24)
    chat(engine, models, "adapter1", temperature=0, max_tokens=4)  # the base is served with LoRA layers present
    assert engine.generate_ids(str(models["base"]), None, prompt, max_tokens=24) == [reference]
    result = chat(engine, models, temperature=0, max_tokens=24)
    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    assert result["choices"][0]["message"]["content"] == tokenizer.decode(reference, skip_special_tokens=True)
    assert result["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 24, "total_tokens": len(prompt) + 24}


def test_greedy_with_an_adapter_equals_generate_on_the_merged_export(engine, models, tmp_path):
    merged = export_model(models["base"], models["adapter1"], "merged", tmp_path / "merged")
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in merged.iterdir()}
    assert not (merged / "adapter_config.json").exists()
    assert AutoTokenizer.from_pretrained(merged).chat_template == CHAT_TEMPLATE
    prompt = engine.prompt_ids(str(models["base"]), {"messages": QUESTION})
    reference = reference_greedy(merged, prompt, 24)  # plain transformers, no PEFT
    assert engine.generate_ids(str(models["base"]), str(models["adapter1"]), prompt, max_tokens=24) == [reference]
    assert reference != reference_greedy(models["base"], prompt, 24)  # the adapter does change the model


def test_a_trained_jobs_final_adapter_is_served_and_exported(engine, models, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Paris."}]}
            for i in range(8)]
    (job_dir / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    jobdir.write_json_atomic(job_dir / jobdir.SPEC, {
        "job_id": "ftjob_" + "0" * 32, "method": "supervised", "base_model": "tiny",
        "base_model_path": str(models["base"]), "training_file": str(job_dir / "train.jsonl"), "validation_file": None,
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0, "learning_rate": 5e-2},
        "seed": 1, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "max_length": 64, "resume_from": None, "attempt": 1})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "openft.train", str(job_dir)], cwd=REPO, env=env, capture_output=True,
                   timeout=120)
    assert jobdir.read_json(job_dir / jobdir.RESULT)["status"] == "succeeded"
    final = job_dir / "checkpoints" / "final"
    merged = export_model(models["base"], final, "merged", tmp_path / "merged")
    prompt = engine.prompt_ids(str(models["base"]), {"messages": QUESTION})
    assert engine.generate_ids(str(models["base"]), str(final), prompt, max_tokens=16) == [
        reference_greedy(merged, prompt, 16)]


def test_adapter_export_and_archive_carry_adapter_tokenizer_and_readme(models, tmp_path):
    out = export_model(models["base"], models["adapter1"], "adapter", tmp_path / "ft", base_model_name="tiny-base")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert (out / "adapter_model.safetensors").read_bytes() == (
        models["adapter1"] / "adapter_model.safetensors").read_bytes()
    assert "tiny-base" in (out / "README.md").read_text()
    with pytest.raises(FileExistsError):
        export_model(models["base"], models["adapter1"], "adapter", out)

    archive = export_archive(models["base"], models["adapter1"], "adapter", tmp_path / "ft-download.tar.gz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"ft-download/adapter_config.json", "ft-download/README.md"} <= names
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial leftovers


# ---- sampling, stops, lengths, streams ------------------------------------------------------------------------------


def test_a_seed_repeats_sampling_and_n_gives_that_many_choices(engine, models):
    first = chat(engine, models, "adapter1", temperature=1.0, top_p=0.9, seed=7, n=2, max_tokens=16)
    again = chat(engine, models, "adapter1", temperature=1.0, top_p=0.9, seed=7, n=2, max_tokens=16)
    other = chat(engine, models, "adapter1", temperature=1.0, top_p=0.9, seed=8, n=2, max_tokens=16)
    texts = [c["message"]["content"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1]
    assert first == again
    assert texts[0] != texts[1]
    assert texts != [c["message"]["content"] for c in other["choices"]]
    greedy = chat(engine, models, "adapter1", temperature=0, max_tokens=16)["choices"][0]["message"]
    assert chat(engine, models, "adapter1", temperature=1.0, top_p=0, max_tokens=16)["choices"][0]["message"] == greedy


def test_a_stop_string_cuts_the_text_before_it(engine, models):
    full = chat(engine, models, temperature=0, max_tokens=30)["choices"][0]["message"]["content"]
    k = next(i for i in range(6, len(full) - 2) if full[i : i + 2].isalpha() and full.find(full[i : i + 2]) == i)
    stop = full[k : k + 2]
    result = chat(engine, models, temperature=0, max_tokens=30, stop=["@@never@@", stop])
    assert result["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": full[:k]},
                                    "finish_reason": "stop"}
    texts, finish, _ = streamed(engine, models, temperature=0, max_tokens=30, stop=stop)
    assert (texts.get(0, ""), finish) == (full[:k], {0: "stop"})


def test_max_tokens_ends_a_choice_with_length(engine, models):
    result = chat(engine, models, "adapter2", temperature=0, max_completion_tokens=5)
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 5


def test_streamed_deltas_add_up_to_the_non_streamed_message(engine, models):
    for request in ({"temperature": 0, "max_tokens": 40}, {"temperature": 0.8, "seed": 3, "n": 2, "max_tokens": 40}):
        result = chat(engine, models, "adapter2", **request)
        texts, finish, done = streamed(engine, models, "adapter2", **request)
        assert texts == {c["index"]: c["message"]["content"] for c in result["choices"]}
        assert finish == {c["index"]: c["finish_reason"] for c in result["choices"]}
        assert done["usage"] == result["usage"] and done["finish_reason"] == result["choices"][0]["finish_reason"]


def test_streaming_never_splits_a_multibyte_character(models):
    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    text = "héllo wörld 日本語 🙂 done"
    detokenizer = _Detokenizer(tokenizer)
    pieces = [detokenizer.push(token) for token in tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert "".join(pieces) + detokenizer.flush() == text
    assert not any("\ufffd" in piece for piece in pieces)


# ---- continuous batching ------------------------------------------------------------------------------------------


def batched(engine, jobs: list[tuple[str | None, dict]], join_at: dict[int, int] | None = None) -> dict[int, dict]:
    """Run ``jobs`` (adapter, request) through one engine together; job k is submitted before decode step
    ``join_at[k]`` (default 0). Returns each job's final reply and the step at which it finished."""
    join_at, replies, finished = join_at or {}, {}, {}

    def emit(k):
        def on(event):
            if "ok" in event:
                replies[k] = event
        return on

    step = 0
    while len(replies) < len(jobs):
        for k, (adapter, request) in enumerate(jobs):
            if join_at.get(k, 0) == step:
                engine.submit(f"job{k}", str(MODELS["base"]), adapter and str(MODELS[adapter]), request, emit(k))
        engine.step()
        step += 1
        for k in replies:
            finished.setdefault(k, step)
    return {k: {**replies[k], "step": finished[k]} for k in replies}


def test_concurrent_requests_over_four_adapters_and_the_base_answer_exactly_as_each_alone(engine, models):
    prompts = [[{"role": "user", "content": text}] for text in (
        "What is the capital of France?", "Hi", "Write a short poem about the sea, please, in a few words.",
        "How many legs does a spider have?")]
    adapters = [None, "adapter1", "adapter2", "adapter3", "adapter4", "adapter1", None, "adapter3"]
    jobs = [(adapter, {"messages": prompts[k % 4], "temperature": 0, "max_tokens": 6 + 5 * k})
            for k, adapter in enumerate(adapters)]
    jobs.append(("adapter2", {"messages": prompts[0], "temperature": 0.9, "seed": 5, "n": 3, "max_tokens": 20}))
    alone = [chat_alone(engine, adapter, request) for adapter, request in jobs]
    together = batched(engine, jobs, join_at={5: 3, 6: 4, 7: 9, 8: 2})
    assert [together[k]["result"] for k in range(len(jobs))] == alone
    assert len({json.dumps(a["choices"][0]["message"]) for a in alone[:5]}) == 5  # the adapters do differ


def test_a_request_arriving_mid_decode_joins_the_batch_and_finishes_before_the_long_one(engine, models):
    long = ("adapter1", {"messages": QUESTION, "temperature": 0, "max_tokens": 60})
    short = ("adapter2", {"messages": QUESTION, "temperature": 0, "max_tokens": 5})
    out = batched(engine, [long, short], join_at={1: 10})
    assert out[1]["step"] < out[0]["step"] == 60  # joined at step 10, ended 5 steps later, not after the long one
    assert out[1]["result"] == chat_alone(engine, *short) and out[0]["result"] == chat_alone(engine, *long)
    assert engine._batches == {}  # finished rows left: nothing is held


def chat_alone(engine, adapter, request):
    return engine.chat(str(MODELS["base"]), adapter and str(MODELS[adapter]), request)


def test_stacked_lora_equals_peft_mixed_forward_over_ranks_targets_scalings_and_the_base(models):
    names = ["adapter1", "rank2", "qv_rslora"]  # ranks 4, 2, 8; all-linear or q/v only; alpha/r and alpha/sqrt(r)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models["base"]), models[names[0]],
                                     adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(models[name], adapter_name=name)
    peft.eval()
    rows = [None, "adapter1", "rank2", "qv_rslora", "rank2", None]
    ids = torch.randint(3, 500, (len(rows), 7), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = peft(input_ids=ids, adapter_names=[a or "__base__" for a in rows]).logits
        stacks = Stacks.build(peft, names)
        with stacks.rows(rows, ids.device):
            got = peft.base_model.model(input_ids=ids).logits
        plain = peft.base_model.model(input_ids=ids).logits  # the layers' own forward is back
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    with torch.inference_mode():  # q/v only: the other layers run plain, whichever adapter PEFT has active
        qv_expected = peft(input_ids=ids[:2], adapter_names=["__base__", "qv_rslora"]).logits
        with Stacks.build(peft, ["qv_rslora"]).rows([None, "qv_rslora"], ids.device):
            qv_got = peft.base_model.model(input_ids=ids[:2]).logits
    torch.testing.assert_close(qv_got, qv_expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(plain, peft(input_ids=ids).logits)
    distinct = [expected[k] for k in range(4)]  # the base and each adapter: all different
    assert all(not torch.allclose(a, b, atol=1e-3) for i, a in enumerate(distinct) for b in distinct[i + 1:])

    assert stacks.covers(peft, {"rank2"}) and not stacks.covers(peft, {"adapter2"})
    peft.load_adapter(models["dora"], adapter_name="dora")
    assert not stacks.covers(peft, {"rank2"})  # a load (or an eviction) rebuilds
    assert Stacks.build(peft, ["rank2", "dora"]) is None  # DoRA: not stacked (PEFT cannot mix it in a batch either)


def test_mixed_batches_of_other_ranks_and_targets_answer_exactly_as_each_alone(engine, models):
    base = str(MODELS["base"])  # LoRA on the embeddings cannot be stacked: PEFT's own forward serves that batch
    for adapters in (["rank2", "qv_rslora", None, "adapter2"], ["embedding", "rank2", None]):
        jobs = [(adapter, {"messages": QUESTION, "temperature": 0, "max_tokens": 12 + k})
                for k, adapter in enumerate(adapters)]
        alone = [chat_alone(engine, adapter, request) for adapter, request in jobs]
        out = []
        for k, (adapter, request) in enumerate(jobs):
            engine.submit(f"mixed{k}", base, adapter and str(MODELS[adapter]), request, out.append)
        engine.step()
        batch = next(iter(engine._batches.values()))
        assert len(batch.rows) == len(jobs) and (batch.stacks is None) == ("embedding" in adapters)
        while len(out) < len(jobs):
            engine.step()
        assert sorted(json.dumps(event["result"]) for event in out) == sorted(json.dumps(a) for a in alone)


# ---- tools ---------------------------------------------------------------------------------------------------------


def test_tool_call_blocks_become_openai_tool_calls():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>{"name": "get_time", "parameters": {}}</tool_call>')
    content, calls = parse_tool_calls(text)
    assert content == "Let me check."
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}), ("function", "get_time", {})]
    assert all(c["id"].startswith("call_") and isinstance(c["function"]["arguments"], str) for c in calls)
    assert parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}</tool_call>')[0] is None
    broken = "<tool_call>{not json}</tool_call>"
    assert parse_tool_calls(broken) == (broken, [])


def test_a_generated_tool_call_streams_content_first_then_the_call(models):
    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    text = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    choice = _Choice(tokenizer, (), tools=True)
    pieces = [choice.push(token, False) for token in tokenizer(text, add_special_tokens=False)["input_ids"]]
    choice.push(tokenizer.eos_token_id, True)
    rest, calls, finish_reason = choice.finish("stop")
    assert "".join(pieces) + rest == "Sure."
    assert (finish_reason, calls[0]["function"]["arguments"]) == ("tool_calls", '{"city": "Paris"}')


def test_streamed_tool_calls_are_openai_deltas_that_the_sdks_accumulator_rebuilds(models):
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    from openft.sampling import _sse

    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    text = ('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    choice = _Choice(tokenizer, (), tools=True)
    events = [{"index": 0, "delta": {"content": piece}} for piece in
              (choice.push(t, False) for t in tokenizer(text, add_special_tokens=False)["input_ids"]) if piece]
    events += list(finish_events(0, choice, "stop"))
    deltas = [e["delta"]["tool_calls"][0] for e in events if "tool_calls" in e["delta"]]
    assert [set(d) for d in deltas] == [{"index", "id", "type", "function"}, {"index", "function"}] * 2
    assert deltas[0]["function"]["arguments"] == "" and deltas[1]["function"] == {"arguments": '{"city": "Paris"}'}

    async def sse_lines():
        async def rest():
            for event in events[1:] + [{"done": True, "finish_reason": "tool_calls", "usage": None}]:
                yield event
        return [line async for line in _sse(rest(), events[0], 1, False, {"id": "c", "created": 0, "model": "m"})]

    state = ChatCompletionStreamState(input_tools=[WEATHER_TOOL])
    for line in asyncio.run(sse_lines()):
        if line.startswith("data: {"):
            state.handle_chunk(ChatCompletionChunk.model_validate_json(line[6:]))
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and final.message.content == "Sure."
    assert [(c.function.name, c.function.arguments) for c in final.message.tool_calls] == [
        ("get_weather", '{"city": "Paris"}'), ("get_time", "{}")]
    assert [c["function"]["arguments"] for c in _answer(events)["tool_calls"]] == ['{"city": "Paris"}', "{}"]


def _answer(events) -> dict:
    answer = Answer(1)
    for event in events:
        answer.add(event)
    return answer.result(None)["choices"][0]["message"]


def test_tool_choice_required_or_named_opens_the_call_and_bad_choices_are_400s(engine, models):
    base = str(models["base"])
    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    named = {"messages": QUESTION, "tools": [WEATHER_TOOL],
             "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    prompt = tokenizer.decode(engine.prompt_ids(base, named))
    assert prompt.endswith('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": ')
    required = tokenizer.decode(engine.prompt_ids(base, {**named, "tool_choice": "required"}))
    assert required.endswith("<|im_start|>assistant\n<tool_call>\n")
    # The tiny random model writes no valid JSON after the opening: the text still shows the enforced call.
    message = chat(engine, models, tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=5)
    assert message["choices"][0]["message"]["content"].startswith("<tool_call>\n")
    for choice, words in (("required", "needs at least one tool"), ({"type": "function", "function": {
            "name": "nope"}}, "not in 'tools'"), ("sometimes", "must be 'none', 'auto', 'required'")):
        request = {"messages": QUESTION, "tool_choice": choice,
                   **({"tools": [WEATHER_TOOL]} if choice != "required" else {})}
        with pytest.raises(InvalidRequest) as info:
            engine.chat(base, None, request)
        assert info.value.param == "tool_choice" and words in info.value.message


def test_tools_reach_the_prompt_through_the_fallback_block_unless_tool_choice_is_none(engine, models):
    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    base = str(models["base"])
    with_tools = tokenizer.decode(engine.prompt_ids(base, {"messages": QUESTION, "tools": [WEATHER_TOOL]}))
    assert "<tools>" in with_tools and '"get_weather"' in with_tools and "<tool_call>" in with_tools
    assert with_tools.startswith("<|im_start|>system\nBe brief.\n\n")  # appended to the system turn
    hidden = engine.prompt_ids(base, {"messages": QUESTION, "tools": [WEATHER_TOOL], "tool_choice": "none"})
    assert hidden == engine.prompt_ids(base, {"messages": QUESTION})
    history = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]
    rendered = tokenizer.decode(engine.prompt_ids(base, {"messages": history, "tools": [WEATHER_TOOL]}))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in rendered
    assert "<tool_response>\n21 C\n</tool_response>" in rendered
    assert chat(engine, models, tools=[WEATHER_TOOL], max_tokens=3)["usage"]["completion_tokens"] == 3


# ---- bad requests and memory --------------------------------------------------------------------------------------


def test_bad_requests_are_refused_with_the_parameter_named(engine, models):
    cases = [({"temperature": 3}, "temperature", "invalid_value"), ({"n": 0}, "n", "invalid_value"),
             ({"stop": ["a", "b", "c", "d", "e"]}, "stop", None),
             ({"logprobs": True}, "logprobs", "unsupported_parameter"),
             ({"max_tokens": 5000}, "messages", "context_length_exceeded"),
             ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", None)]
    for request, param, code in cases:
        with pytest.raises(InvalidRequest) as info:
            chat(engine, models, **request)
        assert (info.value.param, info.value.code) == (param, code), request
    with pytest.raises(InvalidRequest) as info:
        engine.chat(str(models["base"]), "/nonexistent/adapter", {"messages": QUESTION})
    assert info.value.code == "model_not_found"


def test_adapters_are_evicted_least_recently_used_within_the_memory_bound(models):
    adapter_bytes = sum(p.numel() * 4 for name, p in PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(models["base"]), models["adapter1"]).named_parameters() if "lora_" in name)
    engine = Engine(max_adapter_bytes=int(adapter_bytes * 1.5), max_bases=2)
    base, tiny, ad1, ad2 = (str(models[k]) for k in ("base", "tiny", "adapter1", "adapter2"))
    request = {"messages": QUESTION, "temperature": 0, "max_tokens": 12}
    first = engine.chat(base, ad1, request)
    plain = engine.chat(base, None, request)
    engine.chat(base, ad2, request)
    assert [entry[:1] + entry[2:] for entry in engine.loaded()["adapters"]] == [[base, adapter_bytes]]
    assert engine.chat(base, ad1, request) == first  # reloaded after eviction, same answers
    engine.chat(tiny, ad2, request)  # another base's adapter evicts the last adapter of this base
    assert engine.loaded()["bases"] == [base, tiny] and [a[0] for a in engine.loaded()["adapters"]] == [tiny]
    assert engine.chat(base, None, request) == plain
    assert engine.chat(base, ad1, request) == first

    one_base = Engine(max_bases=1)
    one_base.chat(base, None, request)
    one_base.chat(tiny, None, request)
    assert one_base.loaded()["bases"] == [tiny]


# ---- the worker process and its client ------------------------------------------------------------------------------


def test_the_client_drives_a_real_worker_process(engine, models, tmp_path):
    base, adapter = str(models["base"]), str(models["adapter1"])
    request = {"messages": QUESTION, "temperature": 0, "max_tokens": 20}
    expected = engine.chat(base, adapter, request)
    log = tmp_path / "worker.log"

    async def scenario():
        client = InferenceClient(env={**os.environ, "PYTHONPATH": str(REPO)}, log_path=log)
        try:
            assert await client.ping() == {"pong": True}
            model = {"base": base, "adapter": adapter}
            assert await client.chat(model, request) == expected

            events = [event async for event in client.chat_stream(model, request)]
            text = "".join(e["delta"].get("content", "") for e in events if "delta" in e)
            assert text == expected["choices"][0]["message"]["content"]
            assert events[-1] == {"done": True, "finish_reason": "length", "usage": expected["usage"]}

            with pytest.raises(InferenceError) as info:
                await client.chat(model, {**request, "temperature": 5})
            error = info.value
            assert (error.type, error.param, error.status) == ("invalid_request_error", "temperature", 400)
            with pytest.raises(InferenceError) as info:
                async for _ in client.chat_stream({"base": "/nonexistent", "adapter": None}, request):
                    pass
            assert info.value.code == "model_not_found"

            # A reader that walks away mid-stream: the generation is cancelled and the next request is served.
            long_stream = client.chat_stream(model, {**request, "max_tokens": 1500, "temperature": 1})
            async for _ in long_stream:
                break
            await long_stream.aclose()
            assert await asyncio.wait_for(client.chat(model, request), 30) == expected

            # A dead worker is replaced on the next request.
            pid = client.worker_pid
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            assert await client.chat(model, request) == expected
            assert client.worker_pid not in (None, pid)
        finally:
            await client.close()
        assert client.worker_pid is None

    asyncio.run(scenario())
    assert "Traceback" not in log.read_text()


def worker_client(tmp_path, **settings) -> InferenceClient:
    return InferenceClient(env={**os.environ, "PYTHONPATH": str(REPO)}, log_path=tmp_path / "worker.log", **settings)


def test_streams_through_one_worker_interleave_and_each_equals_its_request_alone(engine, models, tmp_path):
    jobs = [("adapter1", 40), (None, 30), ("adapter3", 35), ("adapter4", 25)]
    requests = [{"messages": QUESTION, "temperature": 0, "max_tokens": k} for _, k in jobs]
    alone = [chat_alone(engine, adapter, request) for (adapter, _), request in zip(jobs, requests)]
    arrivals: list[int] = []

    async def read(client, k):
        model = {"base": str(models["base"]), "adapter": jobs[k][0] and str(models[jobs[k][0]])}
        text = ""
        async for event in client.chat_stream(model, requests[k]):
            arrivals.append(k)
            text += event.get("delta", {}).get("content", "")
        return text

    async def scenario():
        client = worker_client(tmp_path)
        try:
            await client.ping()
            return await asyncio.gather(*(read(client, k) for k in range(len(jobs))))
        finally:
            await client.close()

    texts = asyncio.run(scenario())
    assert texts == [a["choices"][0]["message"]["content"] for a in alone]
    first_end = max(i for i, k in enumerate(arrivals) if k == 0)
    assert {k for k in arrivals[:first_end]} == {0, 1, 2, 3}  # all four streamed while the first one still ran


def test_a_hung_worker_is_killed_and_restarted_and_its_request_retried(engine, models, tmp_path):
    model = {"base": str(models["base"]), "adapter": str(models["adapter2"])}
    request = {"messages": QUESTION, "temperature": 0, "max_tokens": 150}
    expected = chat_alone(engine, "adapter2", request)

    async def scenario():
        client = worker_client(tmp_path, stall_timeout=2)
        try:
            await client.ping()
            pid = client.worker_pid
            stream = client.chat_stream(model, request)
            await anext(stream)
            plain = asyncio.ensure_future(client.chat(model, request))
            while client.in_flight() < 2:
                await asyncio.sleep(0.01)
            os.kill(pid, signal.SIGSTOP)  # hung: alive, silent
            with pytest.raises(InferenceError) as info:
                async for _ in stream:
                    pass
            assert (info.value.status, info.value.code) == (503, "inference_worker_lost")
            assert await plain == expected  # retried once on a fresh worker
            assert client.worker_pid not in (None, pid)
        finally:
            await client.close()

    asyncio.run(scenario())


def test_past_capacity_a_request_gets_503_with_retry_after_and_past_the_timeout_504(engine, models, tmp_path):
    model = {"base": str(models["base"]), "adapter": None}
    short = {"messages": QUESTION, "max_tokens": 2}
    long = {"messages": QUESTION, "temperature": 0, "max_tokens": 1900, "n": 16}  # far more than 2 s of work

    async def scenario():
        client = worker_client(tmp_path, max_batch_rows=16, max_queue=0, request_timeout=2)
        try:
            for _ in range(30):  # the first requests may time out while the worker loads torch and the model
                with contextlib.suppress(InferenceError):
                    await client.chat(model, short)
                    break
            running = asyncio.ensure_future(client.chat(model, long))
            while client.in_flight() < 1:
                await asyncio.sleep(0.01)
            with pytest.raises(InferenceError) as info:
                await client.chat(model, short)
            assert (info.value.status, info.value.code, info.value.retry_after) == (503, "server_overloaded", 1)
            with pytest.raises(InferenceError) as info:
                await running
            assert (info.value.status, info.value.code) == (504, "timeout")
            assert client.in_flight() == 0
            assert (await client.chat(model, short))["usage"]["completion_tokens"] == 2  # its rows were freed
        finally:
            await client.close()

    asyncio.run(scenario())
    assert "cancelled" in (tmp_path / "worker.log").read_text()  # the worker stopped the timed-out request


def test_an_adapter_that_fails_to_load_fails_its_request_only(engine, models, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("adapter_config.json",):
        (broken / name).write_bytes((models["adapter1"] / name).read_bytes())
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    good = ("adapter2", {"messages": QUESTION, "temperature": 0, "max_tokens": 8})
    replies: dict[str, dict] = {}
    engine.submit("broken", str(models["base"]), str(broken), good[1], lambda e: replies.setdefault("broken", e))
    engine.submit("good", str(models["base"]), str(models["adapter2"]), good[1],
                  lambda e: replies.setdefault("good", e) if "ok" in e else None)
    while engine.busy():
        engine.step()
    assert replies["broken"]["ok"] is False and replies["broken"]["error"]["type"] == "server_error"
    assert replies["good"]["result"] == chat_alone(engine, *good)


def test_without_max_tokens_generation_stops_at_the_default_bound(models):
    bounded = Engine(default_max_tokens=7)
    result = bounded.chat(str(models["base"]), None, {"messages": QUESTION, "temperature": 0})
    assert result["usage"]["completion_tokens"] == 7 and result["choices"][0]["finish_reason"] == "length"


def test_the_api_side_imports_no_torch_and_the_worker_no_web_stack():
    def modules_after(code: str) -> set[str]:
        out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                             capture_output=True, text=True, check=True, cwd=REPO)
        return {m.split(".")[0] for m in out.stdout.split()}

    api = modules_after("import openft.infer, openft.infer.client, openft.infer.request")
    assert not api & {"torch", "transformers", "peft"}
    worker = modules_after("import openft.infer.worker, openft.infer.engine, openft.export")
    assert "torch" in worker and not worker & {"fastapi", "starlette", "sqlalchemy", "uvicorn", "alembic", "httpx"}
