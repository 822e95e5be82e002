"""Training rows → token ids and labels: OpenAI's SFT, DPO and RFT data formats rendered through the model's chat
template.

Owns the answer to "which tokens does the model see, and which does it learn to produce":

* Chat rows ``{"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool}`` are rendered
  with the tokenizer's chat template. Labels cover each assistant turn whose ``weight`` is not 0 (default 1):
  the turn's text up to and including its end-of-turn marker (``<|im_end|>`` in ChatML), but not the role
  header before it nor the whitespace after it. System, developer, user and tool turns are never trained.
* Legacy rows ``{"prompt", "completion"}`` are plain text: ``prompt`` then ``completion`` plus the
  EOS token (so the model learns to stop, as TRL does for prompt–completion data); only the completion and EOS
  are trained.
* Preference rows ``{"input": {"messages", "tools"?, "parallel_tool_calls"?}, "preferred_output": [assistant],
  "non_preferred_output": [assistant]}`` (method "dpo") become ``{"prompt_ids", "chosen_ids",
  "rejected_ids"}``: the prompt is ``input`` rendered with the generation prompt (``add_generation_prompt``, so it
  ends with the assistant header, exactly what the model sees at inference); chosen and rejected are each output's
  assistant turn as the template renders it after that header — its text, any tool calls (rendered as below), and
  the end-of-turn marker, without the whitespace after it. The prompt and each completion are tokenised apart, as
  at inference, where the prompt is tokenised alone and the completion generated.
* Reinforcement rows ``{"messages": [...], "tools"?: [...], <any other key>}`` (method
  "reinforcement") become ``{"prompt_ids", "item"}``: the prompt is the conversation rendered with the generation
  prompt, exactly as the inference side renders a chat request, so the model is trained on what it will be asked;
  ``item`` is the row without ``messages`` and ``tools``, what a grader reads as ``{{item.<key>}}``. A prompt
  longer than its budget (``max_length`` less the completion's tokens, see ``openft.train.rft``) loses its
  *beginning*, unlike the rows below: its end holds the question and the assistant header the completion follows.
* Rows longer than ``max_length`` tokens are truncated from the end, as OpenAI does. For a preference pair that
  is each of prompt + chosen and prompt + rejected: the completion loses its end first; a prompt that alone fills
  ``max_length`` leaves empty completions, a pair that then teaches nothing (loss ln 2, no gradient).

Tools and the chat template: rendered by ``openft.chatformat`` (natively where the template supports tools,
otherwise in the Hermes text format), the one rendering inference uses as well.

Rows have been validated by the service; this module assumes a valid structure.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from openft.chatformat import generation_header, template_renders_tools, to_template_messages


IGNORE = -100  # the label of a token the loss skips (the value PyTorch and transformers use)


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """The rows of a JSONL file, one at a time."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def tokenize_file(path: str | Path, tokenizer, max_length: int | None) -> tuple[list[dict], int]:
    """Every row of a JSONL file as ``{"input_ids", "labels"}``; also returns how many rows were truncated."""
    return _collect(iter_file(path, tokenizer, max_length))


def iter_file(path: str | Path, tokenizer, max_length: int | None) -> Iterator[tuple[dict, bool]]:
    """``tokenize_file`` one row at a time, each with whether it was truncated (counting holds no rows)."""
    for row in read_jsonl(path):
        example = tokenize_row(row, tokenizer)
        if max_length is not None and len(example["input_ids"]) > max_length:
            yield {key: ids[:max_length] for key, ids in example.items()}, True
        else:
            yield example, False


def count_file(path: str | Path, tokenizer, max_length: int | None, batch: int = 256) -> Iterator[tuple[int, bool]]:
    """Each row's token count as ``iter_file`` trains it (cut to ``max_length``) and whether it was cut, for a dry
    run: a conversation is rendered once and encoded in batches, without locating the trained turns (only labels
    need them), which makes counting several times faster than tokenizing."""
    rows = read_jsonl(path)
    while chunk := list(itertools.islice(rows, batch)):
        # A conversation is one text; a legacy row two (prompt and completion, tokenized apart, then EOS).
        parts = [[_render_whole(row, tokenizer)] if "messages" in row else [row["prompt"], row["completion"]]
                 for row in chunk]
        encoded = iter(tokenizer([text for texts in parts for text in texts], add_special_tokens=False)["input_ids"])
        for texts in parts:
            n = sum(len(next(encoded)) for _ in texts) + (len(texts) == 2)
            yield (max_length, True) if max_length is not None and n > max_length else (n, False)


def _render_whole(row: dict, tokenizer) -> str:
    messages, tools = to_template_messages(row, native_tools=template_renders_tools(tokenizer))
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)


def _collect(items: Iterator[tuple[dict, bool]]) -> tuple[list[dict], int]:
    rows, truncated = [], 0
    for row, cut in items:
        rows.append(row)
        truncated += cut
    return rows, truncated


def tokenize_row(row: dict, tokenizer) -> dict:
    """One training row as ``{"input_ids": [...], "labels": [...]}`` (labels are ``IGNORE`` where not trained)."""
    if "messages" in row:
        return _tokenize_chat(row, tokenizer)
    return _tokenize_prompt_completion(row, tokenizer)


def tokenize_preference_file(path: str | Path, tokenizer, max_length: int | None) -> tuple[list[dict], int]:
    """Every preference row of a JSONL file as ``{"prompt_ids", "chosen_ids", "rejected_ids"}``; also returns how
    many pairs were truncated."""
    return _collect(iter_preference_file(path, tokenizer, max_length))


def iter_preference_file(path: str | Path, tokenizer, max_length: int | None) -> Iterator[tuple[dict, bool]]:
    """``tokenize_preference_file`` one pair at a time, each with whether it was truncated."""
    for row in read_jsonl(path):
        pair = tokenize_preference_row(row, tokenizer)
        prompt, chosen, rejected = pair["prompt_ids"], pair["chosen_ids"], pair["rejected_ids"]
        if max_length is not None and len(prompt) + max(len(chosen), len(rejected)) > max_length:
            room = max(max_length - len(prompt), 0)
            yield {"prompt_ids": prompt[:max_length], "chosen_ids": chosen[:room], "rejected_ids": rejected[:room]}, True
        else:
            yield pair, False


def tokenize_preference_row(row: dict, tokenizer) -> dict:
    prompt, chosen, rejected = render_preference(row, tokenizer)
    return {
        key: tokenizer(text, add_special_tokens=False)["input_ids"]
        for key, text in (("prompt_ids", prompt), ("chosen_ids", chosen), ("rejected_ids", rejected))
    }


def render_preference(row: dict, tokenizer) -> tuple[str, str, str]:
    """The rendered prompt (ending with the generation prompt) and the preferred and non-preferred completions."""
    native_tools = template_renders_tools(tokenizer)
    prompt, completions = None, []
    for key in ("preferred_output", "non_preferred_output"):
        conversation = {**row["input"], "messages": list(row["input"]["messages"]) + list(row[key])}
        messages, tools = to_template_messages(conversation, native_tools=native_tools)
        prompt = tokenizer.apply_chat_template(messages[:-1], tools=tools, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                "the model's chat template does not render an assistant reply as the generation prompt followed by "
                "the reply, so the preferred and non-preferred completions cannot be separated from the prompt"
            )
        # The newline a template puts after the end-of-turn marker is not generated by the model.
        completions.append(full[len(prompt) :].rstrip())
    return prompt, completions[0], completions[1]


def tokenize_prompt_file(path: str | Path, tokenizer, max_prompt_tokens: int | None) -> tuple[list[dict], int]:
    """Every reinforcement row of a JSONL file as ``{"prompt_ids", "item"}``; prompts longer than
    ``max_prompt_tokens`` keep their last ``max_prompt_tokens`` tokens. Also returns how many were truncated."""
    return _collect(iter_prompt_file(path, tokenizer, max_prompt_tokens))


def iter_prompt_file(path: str | Path, tokenizer, max_prompt_tokens: int | None) -> Iterator[tuple[dict, bool]]:
    """``tokenize_prompt_file`` one prompt at a time, each with whether it was truncated."""
    for row in read_jsonl(path):
        ids = tokenizer(render_prompt(row, tokenizer), add_special_tokens=False)["input_ids"]
        cut = max_prompt_tokens is not None and len(ids) > max_prompt_tokens
        yield {"prompt_ids": ids[len(ids) - max_prompt_tokens :] if cut else ids, "item": grader_item(row)}, cut


def render_prompt(row: dict, tokenizer) -> str:
    """A reinforcement row's conversation (and tools) rendered up to and including the generation prompt."""
    messages, tools = to_template_messages(row, native_tools=template_renders_tools(tokenizer))
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)


def grader_item(row: dict) -> dict:
    """What a grader sees as ``item``: every key of a reinforcement row but the reserved ``messages`` and ``tools``."""
    return {key: value for key, value in row.items() if key not in ("messages", "tools")}


def _tokenize_prompt_completion(row: dict, tokenizer) -> dict:
    # Tokenised apart, as at inference time, where the prompt is tokenised alone and the completion generated.
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": prompt + completion, "labels": [IGNORE] * len(prompt) + completion}


def _tokenize_chat(row: dict, tokenizer) -> dict:
    text, spans = render_chat(row, tokenizer)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoding["input_ids"]
    # A token belongs to the span its first character falls in (a multi-byte character's pieces share offsets).
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE
        for token, (begin, _) in zip(input_ids, encoding["offset_mapping"], strict=True)
    ]
    return {"input_ids": input_ids, "labels": labels}


def render_chat(row: dict, tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans to train on (one per trained assistant turn)."""
    messages, tools = to_template_messages(row, native_tools=template_renders_tools(tokenizer))
    trained = [m["role"] == "assistant" and m.get("weight", 1) != 0 for m in row["messages"]]
    # to_template_messages maps messages one to one, except for a system turn it may prepend for tools.
    trained = [False] * (len(messages) - len(trained)) + trained

    def render(prefix: list[dict]) -> str:
        return tokenizer.apply_chat_template(prefix, tools=tools, tokenize=False)

    text = render(messages)
    header = generation_header(tokenizer)
    spans = [_assistant_span(render, messages, k, text, header) for k, train in enumerate(trained) if train]
    return text, spans


def _assistant_span(render, messages: list[dict], k: int, text: str, header: str) -> tuple[int, int]:
    """Where assistant turn ``k``'s own text (with its end-of-turn marker) lies in the full rendering ``text``."""
    through_turn = render(messages[: k + 1])
    if not text.startswith(through_turn):
        raise ValueError(
            "the model's chat template renders a conversation prefix differently from the whole conversation, "
            "so assistant turns cannot be located for loss masking"
        )
    if header and header in through_turn:
        start = through_turn.rfind(header) + len(header)  # the turn's own header is the last one
    else:  # no recognisable header: train the whole turn
        start = len(render(messages[:k])) if k else 0
    # The turn ends at its end-of-turn marker; the newline a template puts after it is not generated by the model.
    return start, len(through_turn.rstrip())
