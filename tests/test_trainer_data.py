"""What the model is trained on: tokens and labels from OpenAI-format rows (openft.train.data), and the packed
batch loss (openft.train.batching), checked with the tiny model's real tokenizer and weights."""

from __future__ import annotations

import json

import pytest

from openft import chatformat
from openft.train import data
from openft.train.data import IGNORE


@pytest.fixture(scope="module")
def tokenizer(tiny_model):  # tiny_model: the session fixture of conftest.py (tests/tinymodel.py)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def trained_text(example: dict, tokenizer) -> list[str]:
    """The trained tokens, decoded, one string per contiguous trained run."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_only_assistant_turns_with_weight_one_are_trained_including_their_end_marker(tokenizer):
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there!", "weight": 0},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Sunny and warm."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You're welcome.", "weight": 1},
        ]
    }
    example = data.tokenize_row(row, tokenizer)

    assert trained_text(example, tokenizer) == ["Sunny and warm.<|im_end|>", "You're welcome.<|im_end|>"]
    # Everything else, role headers and the newline after <|im_end|> included, is context only.
    assert tokenizer.decode(example["input_ids"]) == tokenizer.apply_chat_template(row["messages"], tokenize=False)


def test_developer_messages_render_as_system_turns(tokenizer):
    row = {"messages": [{"role": "developer", "content": "Rules."}, {"role": "assistant", "content": "Ok."}]}
    example = data.tokenize_row(row, tokenizer)

    assert tokenizer.decode(example["input_ids"]).startswith("<|im_start|>system\nRules.<|im_end|>")
    assert trained_text(example, tokenizer) == ["Ok.<|im_end|>"]


def test_legacy_prompt_completion_rows_train_on_the_completion_and_eos_only(tokenizer):
    example = data.tokenize_row({"prompt": "Q: capital of France? A:", "completion": " Paris"}, tokenizer)

    assert tokenizer.decode(example["input_ids"]) == "Q: capital of France? A: Paris<|im_end|>"
    assert trained_text(example, tokenizer) == [" Paris<|im_end|>"]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},  # arguments: a JSON string, as OpenAI's
}
TOOL_ROW = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [WEATHER_CALL]},  # no content: allowed with tool_calls
        {"role": "tool", "tool_call_id": "call_1", "content": "21.0"},
        {"role": "assistant", "content": "It is 21 degrees."},
    ],
    "tools": [WEATHER_TOOL],
    "parallel_tool_calls": False,
}


def test_tool_definitions_calls_and_results_render_as_text_when_the_template_cannot(tokenizer):
    assert not chatformat.template_renders_tools(tokenizer)  # SmolLM2's ChatML template ignores tools
    example = data.tokenize_row(TOOL_ROW, tokenizer)
    text = tokenizer.decode(example["input_ids"])

    assert text.startswith("<|im_start|>system\n" + chatformat.TOOLS_PREAMBLE + json.dumps(WEATHER_TOOL))
    assert "<|im_start|>tool\n<tool_response>\n21.0\n</tool_response><|im_end|>" in text
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert trained_text(example, tokenizer) == [call, "It is 21 degrees.<|im_end|>"]


# A minimal template that renders tools and tool calls itself, like Qwen's or Llama 3.1's do.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments.city }}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_templates_that_render_tools_receive_them_natively_with_parsed_arguments(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = TOOLS_TEMPLATE
    assert chatformat.template_renders_tools(tokenizer)
    example = data.tokenize_row(TOOL_ROW, tokenizer)

    assert tokenizer.decode(example["input_ids"]).startswith("<|im_start|>system\nTOOLS:get_weather;<|im_end|>")
    assert trained_text(example, tokenizer) == ["CALL get_weather Paris<|im_end|>", "It is 21 degrees.<|im_end|>"]


def test_rows_longer_than_max_length_are_truncated_from_the_end(tokenizer, tmp_path):
    long_row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 200}]}
    short_row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(long_row) + "\n" + json.dumps(short_row) + "\n")

    (long_example, short_example), truncated = data.tokenize_file(path, tokenizer, max_length=64)

    assert truncated == 1
    assert long_example == {k: v[:64] for k, v in data.tokenize_row(long_row, tokenizer).items()}
    assert short_example == data.tokenize_row(short_row, tokenizer)


def test_a_packed_batch_scores_like_its_examples_scored_one_by_one(tiny_model, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from openft.train import batching

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    rows = [
        TOOL_ROW,
        {"messages": [{"role": "user", "content": "Colours?"}, {"role": "assistant", "content": "Red and blue."}]},
        {"prompt": "Numbers: one two", "completion": " three four"},
    ]
    examples = [data.tokenize_row(row, tokenizer) for row in rows]
    with torch.no_grad():
        packed = batching.score(model, batching.collate(examples))
        alone = [batching.score(model, batching.collate([example])) for example in examples]

    assert packed.tokens == sum(s.tokens for s in alone)
    assert packed.correct == sum(s.correct for s in alone)
    assert packed.loss_sum == pytest.approx(sum(s.loss_sum for s in alone), rel=1e-5)


def test_counting_for_a_dry_run_equals_the_length_of_every_tokenized_row(tokenizer, tmp_path):
    rows = [TOOL_ROW, {"prompt": "Say hi", "completion": " hi"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 200}]},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"},
                          {"role": "assistant", "content": "é ü 漢字", "weight": 0},
                          {"role": "user", "content": "y"}, {"role": "assistant", "content": "ok"}]}] * 3
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    expected = [(len(example["input_ids"]), cut) for example, cut in data.iter_file(path, tokenizer, max_length=64)]
    assert list(data.count_file(path, tokenizer, max_length=64, batch=5)) == expected  # batches cut across rows
    assert 0 < sum(cut for _, cut in expected) < len(expected) == 12  # some rows cut, some not
