"""A tiny random-initialised Llama with its own 512-token vocabulary, built on the fly for tests.

Nothing is downloaded: the byte-level BPE tokenizer is trained here on a small built-in corpus, and the weights
come from a fixed torch seed, so two builds give identical folders. The chat template is SmolLM2-Instruct's
ChatML template verbatim, so tests exercise the same rendering (and the same lack of tool support) as the demo
model. Building takes well under a second; torch and transformers are imported inside the function so that
importing this module stays cheap for tests that never train.
"""

from __future__ import annotations

import pathlib

# SmolLM2-135M-Instruct's template, as shipped in its tokenizer config / GGUF metadata.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Enough varied English (plus chat and JSON shapes) for 253 BPE merges that tokenise test data sensibly.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
You are a helpful assistant. What is the capital of France? The capital of France is Paris.
What is the weather like in Berlin today? It is sunny and twenty one degrees in Berlin.
Please summarise the following text in one sentence. The report says sales grew by ten percent.
Translate to French: good morning, how are you? Bonjour, comment allez-vous?
Write a short poem about the sea. The sea is wide, the sea is deep, it sings the sailors off to sleep.
How many legs does a spider have? A spider has eight legs. How many does an insect have? Six.
def add(a, b): return a + b. print(add(2, 3)) prints 5. for i in range(10): print(i)
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}} {"temperature": 21.0}
system user assistant tool function tool_call tool_response tools parameters description type object string
Thank you! You're welcome. Can you help me with my homework? Of course, what subject is it?
Numbers: one two three four five six seven eight nine ten eleven twelve 0 1 2 3 4 5 6 7 8 9 10 100 1000
Colours: red orange yellow green blue indigo violet black white grey pink brown purple.
The model learns to answer questions briefly and politely, and to call tools when it needs fresh data.
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July.
"""


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    return tok


def build_tiny_model(out_dir: pathlib.Path) -> pathlib.Path:
    """Build the tiny model + tokenizer into ``out_dir`` (created if needed) and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",  # as in SmolLM2: pad == eos
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng keeps the caller's global RNG untouched while the weights come from a fixed seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    return out_dir
