"""Reinforcement fine-tuning (method "reinforcement"): TRL's GRPOTrainer with LoRA (or full fine-tuning when
``spec["lora"]`` is null), rewarded by the job's grader, driven through the job directory exactly as ``sft`` and
``dpo`` are (the shared pause/resume recipe, Trainer settings and verdict live in ``attempt``; the starting model,
with an earlier fine-tune merged in, comes from ``models``).

Each step takes ``batch_size`` prompts of the training file (rendered by ``data.tokenize_prompt_file``), samples
``num_generations`` completions of each from the current policy, grades every completion, and takes one GRPO
optimizer step on the group-normalised rewards. Steps per epoch are ceil(prompts / batch_size), as at OpenAI: the
last batch of an epoch may hold fewer prompts.

OpenAI's hyperparameters, and what they become here:

* ``compute_multiplier`` → completions per prompt: ``num_generations = clamp(round(4 × compute_multiplier), 2,
  16)`` (1.0 gives 4; GRPO needs at least 2 to compare completions of one prompt).
* ``reasoning_effort`` → the most tokens a completion may have: low 32, default 64, medium 128, high 256 (the
  models served do not reason apart from their answer, so the effort buys answer length; small numbers because
  sampling dominates a step on CPU). With a ``max_length``, a completion gets at most half of it, and a prompt
  longer than the rest loses its beginning (with a warning).
* ``eval_interval`` → a validation every that many steps, and at the last step; ``eval_samples`` → completions
  sampled per validation prompt.
* ``batch_size``, ``n_epochs``, ``learning_rate`` as in every recipe (``attempt.training_args``).

Sampling: temperature 1.0, no top-p/top-k (TRL's defaults), all completions of a step in one batched,
left-padded ``generate`` call with a KV cache (TRL's), from the policy in eval mode (no LoRA dropout) with the
adapter merged into a copy of the weights (``sampling_policy``), as a serving engine, or TRL's vLLM path, samples
it. Training completions draw from the global torch RNG,
which the Trainer seeds from ``spec["seed"]`` and checkpoints. Validation completions draw from a generator
forked off it and seeded with ``spec["seed"]`` each time: every validation samples with the same noise, so its
reward follows the model, not the dice, and it draws nothing from the training stream. GRPO's settings beyond
TRL's defaults: no KL penalty (``beta`` 0, TRL's default: no reference model is kept), one optimisation pass per
generation (``num_iterations`` 1, ``steps_per_generation`` 1).

Rewards: a completion's text becomes the grader's ``sample`` (``openft.graders.templates.make_sample``):
Hermes ``<tool_call>`` blocks are parsed into ``output_tools`` exactly as the chat completions endpoint parses them
(``openft.chatformat.parse_tool_calls``, with ids ``call_0``, ``call_1``… so that rewards repeat), the text
before them is ``output_text``, and ``output_json`` is the text parsed as JSON when it is JSON. The row without
``messages`` and ``tools`` is the grader's ``item``. A sample the grader cannot grade scores 0 and is counted (a
warning event names each kind of failure the first time it occurs in an attempt). Graders that wait on another
process (python, score_model, label_model) grade a batch 8 samples at a time; the others one after another.

Exactness: TRL's RepeatSampler draws every epoch's order from one generator
seeded once, so a process that resumes in epoch 2 would replay epoch 1's order; ``PromptSampler`` draws epoch
``e``'s order from ``seed + e`` instead. With one generation per optimizer step, every step ends on a generation
buffer boundary, the only place a pause is exact, so ``attempt.JobCallback`` may pause at any step end.

What each step reports (``metrics`` records, ``data``), beside ``step`` and ``total_steps``:

* ``train_loss``: the step's GRPO loss (TRL's "dapo" loss: the clipped policy-gradient objective averaged over
  completion tokens, computed by ``grpo_loss`` with each prompt scored once for all its completions; its value
  hovers around 0 and is not a measure of quality — the reward is);
* ``train_mean_reward``: the mean reward of the step's batch_size × num_generations completions;
* ``train_mean_parse_error``: the fraction of them the grader could not parse (``sample_parse_error``, e.g. a
  ``{{sample.output_json.x}}`` on an output that is not JSON); ``train_mean_grader_error``: the fraction that could
  not be graded at all, for any reason (they scored 0);
* ``completion_tokens_mean``: the mean completion length in tokens;
* ``scores``: ``{"train_reward_mean", "graders": [{"name", "type", "train_reward_mean"}]}`` — one entry per
  sub-grader of a multi grader, else the grader itself;
* ``errors``: ``{"graders": [{"name", "type", "train_<kind>_mean", "train_<kind>_count"}]}`` for the kinds
  ``sample_parse_error``, ``invalid_variable_error`` and ``other_error`` (every other grader failure), for the
  top-level grader;
* ``step_time_s`` (the optimizer step, validation excluded), ``generation_time_s`` (sampling),
  ``grading_time_s``;
* at validation steps, with a validation file: ``full_valid_mean_reward``, ``full_valid_mean_parse_error`` and
  ``full_valid_mean_grader_error`` over eval_samples completions of every validation prompt, ``valid_reward_mean``
  in ``scores`` and in each of its graders, ``valid_<kind>_mean``/``_count`` in ``errors``, and ``eval_time_s``.
* ``train_mean_token_accuracy`` is not reported: there are no target tokens to be accurate on.

Checkpoints: at every validation step but the last (reason "eval", with the step's numeric metrics, so the service
can keep the best 3 by ``full_valid_mean_reward``; without a validation file they still come every eval_interval
steps), at a pause, and the final model. results.csv keeps OpenAI's header: ``train_loss`` is the GRPO loss,
``train_accuracy`` the train mean reward, ``valid_loss`` is empty and ``valid_mean_token_accuracy`` holds the full
validation mean reward at validation steps. ``trained_tokens`` is the number of prompt and completion tokens of
every training completion (TRL's count, which the checkpoints carry).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch.utils.data import Sampler
from transformers.utils import logging as hf_logging
from trl import GRPOConfig, GRPOTrainer

from openft.chatformat import parse_tool_calls
from openft.errors import InvalidRequest
from openft.graders import Endpoint, make_sample, validate_grader
from openft.graders.outcome import Outcome
from openft.graders.run import grade
from openft.train import JobError, attempt, data, models, reporting, shared_prefix

COMPLETION_TOKENS = {"low": 32, "default": 64, "medium": 128, "high": 256}
ERROR_KINDS = ("sample_parse_error", "invalid_variable_error", "other_error")
WAITING_GRADERS = {"python", "score_model", "label_model"}  # they wait on a process or an endpoint
GRADING_THREADS = 8


def run(job_dir: Path, spec: dict) -> dict:
    """Run one attempt of the job in ``job_dir``; returns the ``result.json`` content it ends with."""
    hf_logging.disable_progress_bar()
    resume_dir = attempt.resume_dir(job_dir, spec)
    attempt.announce_start(job_dir, resume_dir)
    tokenizer = models.load_tokenizer(spec)
    hp = spec["hyperparameters"]
    generations, completion_tokens = generation_settings(spec)
    grader = Grader(job_dir, spec)

    warn = resume_dir is None  # an attempt that resumes has said it all before
    train_prompts = _prompts(job_dir, spec, "training_file", tokenizer, completion_tokens, warn)
    valid_prompts = []
    if spec.get("validation_file"):
        valid_prompts = _prompts(job_dir, spec, "validation_file", tokenizer, completion_tokens, warn)

    def reward(prompts, completions, completion_ids, row, **_) -> list[float]:
        """TRL's reward function: the grader's reward of each completion (``row`` indexes train_prompts)."""
        trainer.last_graded = grader.grade(completions, [train_prompts[i]["item"] for i in row], completion_ids)
        return [outcome.reward for outcome in trainer.last_graded.outcomes]

    def measure(trainer: GradedGRPOTrainer, step: int) -> dict:
        graded = trainer.last_graded
        figures = {"train_loss": trainer.last_loss, **grader.figures(graded, "train", "train_mean")}
        figures |= {"step_time_s": time.monotonic() - job.step_started,
                    "generation_time_s": trainer.generation_seconds, "grading_time_s": graded.seconds}
        if valid_prompts and (step % hp["eval_interval"] == 0 or step == trainer.state.max_steps):
            figures = _merge(figures, _validate(trainer, grader, valid_prompts, spec))
        return figures

    job = ValidationCheckpoints(job_dir, measure, hp["eval_interval"])
    trainer = GradedGRPOTrainer(
        model=models.load_base_model(spec),
        reward_funcs=[reward],
        args=attempt.training_args(
            GRPOConfig,
            job_dir,
            spec,
            per_device_train_batch_size=hp["batch_size"] * generations,  # TRL counts completions
            num_generations=generations,
            max_completion_length=completion_tokens,
            steps_per_generation=1,
            num_iterations=1,
            temperature=1.0,
            beta=0.0,
            save_strategy="no",  # ValidationCheckpoints asks for its saves
        ),
        train_dataset=Dataset.from_list([{"prompt": p["prompt_ids"], "row": i} for i, p in enumerate(train_prompts)]),
        processing_class=tokenizer,
        peft_config=models.lora_config(spec),
        callbacks=[job],
    )
    job.trainer = trainer
    trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)

    return attempt.finish(job_dir, trainer, job, int(trainer.state.num_input_tokens_seen))


def generation_settings(spec: dict) -> tuple[int, int]:
    """(completions per prompt, most tokens per completion) of the job (see the module docstring)."""
    hp = spec["hyperparameters"]
    generations = min(16, max(2, round(4 * hp["compute_multiplier"])))
    tokens = COMPLETION_TOKENS[hp.get("reasoning_effort") or "default"]
    if spec.get("max_length"):
        tokens = max(1, min(tokens, spec["max_length"] // 2))
    return generations, tokens


def _prompts(job_dir: Path, spec: dict, key: str, tokenizer, completion_tokens: int, warn: bool) -> list[dict]:
    budget = spec["max_length"] - completion_tokens if spec.get("max_length") else None
    prompts, truncated = data.tokenize_prompt_file(spec[key], tokenizer, budget)
    if not prompts:
        raise JobError(f"The {key.replace('_', ' ')} has no examples")
    if truncated and warn:
        noun = "training" if key == "training_file" else "validation"
        text = (f"{truncated} {noun} prompt(s) exceed {budget} tokens ({spec['max_length']} less {completion_tokens} "
                "for the completion) and lost their beginning")
        reporting.message(job_dir, text, level="warn")
    return prompts


class PromptSampler(Sampler):
    """Each epoch, every prompt once in an order drawn from ``seed + epoch``, each repeated ``generations`` times in
    a row, so that a batch of batch_size × generations indices is batch_size whole groups (the last batch of the
    epoch may hold fewer). Unlike TRL's RepeatSampler it keeps that last, short batch (OpenAI's steps per epoch) and
    its order does not depend on how many epochs this process has drawn before (exact resume into a later epoch)."""

    def __init__(self, n_prompts: int, generations: int, seed: int):
        self.n_prompts, self.generations, self.seed, self.epoch = n_prompts, generations, seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer (through accelerate) before every epoch
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.n_prompts, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for index in order.tolist():
            yield from [index] * self.generations

    def __len__(self) -> int:
        return self.n_prompts * self.generations


class GradedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer on prompts that ``data`` has tokenised, sampled by ``PromptSampler``; keeps what the step reports."""

    last_graded: Graded | None = None
    last_loss: float | None = None
    generation_seconds: float = 0.0

    def _get_train_sampler(self, dataset=None) -> Sampler:
        dataset = self.train_dataset if dataset is None else dataset
        return PromptSampler(len(dataset), self.num_generations, self.args.seed)

    def _tokenize_prompts(self, prompts: list):
        return [list(ids) for ids in prompts], None, {}  # already token ids: no images, no multimodal fields

    def _generate(self, prompts: list):
        started = time.monotonic()
        try:
            with sampling_policy(self.model):
                return super()._generate(prompts)
        finally:
            self.generation_seconds = time.monotonic() - started

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = grpo_loss(model, inputs, self.epsilon_low, self.epsilon_high)
        self.last_loss = float(loss.detach())  # one batch per optimizer step: the step's loss
        return loss


@contextmanager
def sampling_policy(model) -> Iterator[None]:
    """The policy as it samples: eval mode (no dropout), and with LoRA the adapter merged into the weights, so that
    each decoding step runs the plain model instead of every adapted layer's extra A and B products (a large share
    of a small batch's decoding step on CPU). The merged weights are new tensors and the originals are put back
    untouched afterwards (merging and unmerging in place would leave rounding in the weights)."""
    was_training = model.training
    originals = []
    model.eval()
    try:
        if isinstance(model, PeftModel):
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, LoraLayer) and not module.merged:
                        weight = module.get_base_layer().weight
                        delta = sum(module.get_delta_weight(name) for name in module.active_adapters
                                    if name in module.lora_A)
                        originals.append((weight, weight.data))
                        weight.data = weight.data + delta
            with model.disable_adapter():  # the adapters' own path is in the weights now
                yield
        else:
            yield
    finally:
        for weight, original in originals:
            weight.data = original
        model.train(was_training)


def grpo_loss(model, inputs: dict, epsilon_low: float, epsilon_high: float) -> torch.Tensor:
    """TRL's "dapo" GRPO loss for one generation batch with one optimisation pass (no KL term): the clipped
    policy-gradient objective summed over all completion tokens over their number. The completions of one prompt are
    scored in one row after the prompt (``shared_prefix``), only at their tokens' positions."""
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["prompt_ids"], inputs["prompt_mask"], strict=True)]
    completions = [ids[mask.bool()].tolist()
                   for ids, mask in zip(inputs["completion_ids"], inputs["completion_mask"], strict=True)]
    rows_of: dict[tuple, list[int]] = {}  # the batch's rows by prompt (TRL shuffles a generation batch's rows)
    for row, prompt in enumerate(prompts):
        rows_of.setdefault(tuple(prompt), []).append(row)
    order = [row for rows in rows_of.values() for row in rows]  # collate's completion numbering → batch row
    groups = [(list(prompt), [completions[row] for row in rows]) for prompt, rows in rows_of.items()]
    device = inputs["advantages"].device
    batch = {k: v.to(device) for k, v in shared_prefix.collate(groups).items()}
    logps = shared_prefix.token_logps(model, batch)
    advantages = inputs["advantages"][torch.tensor(order, device=device)[batch["owners"]]]
    ratio = torch.exp(logps - logps.detach())  # 1, with the gradient of log π: one pass, the policy sampled them
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    return -torch.min(ratio * advantages, clipped * advantages).sum() / inputs["num_items_in_batch"].clamp(min=1.0)


class ValidationCheckpoints(attempt.JobCallback):
    """The job callback with RFT's checkpoint schedule: every ``eval_interval`` steps (reason "eval"), not at epoch
    ends. The last step's is not written: the final model replaces it."""

    save_reason = "eval"

    def __init__(self, job_dir: Path, measure, eval_interval: int):
        super().__init__(job_dir, measure)
        self.eval_interval = eval_interval
        self.step_started = time.monotonic()

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.monotonic()
        return super().on_step_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        control = super().on_step_end(args, state, control, **kwargs)
        step = state.global_step
        if self.stop is None and step % self.eval_interval == 0 and step < state.max_steps:
            control.should_save = True
        return control


@dataclass
class Graded:
    """One batch of graded completions: an Outcome per completion, their token counts, the wall time it took."""

    outcomes: list[Outcome]
    tokens: list[int]
    seconds: float


class Grader:
    """The job's grader over batches of completions, and the figures a step reports about them."""

    def __init__(self, job_dir: Path, spec: dict):
        try:
            self.grader = validate_grader(spec.get("grader"))
        except InvalidRequest as exc:  # the service validated it: only a hand-written spec gets here
            raise JobError(f"The job's grader is invalid: {exc}") from None
        endpoint = spec.get("grader_endpoint") or {}
        self.endpoint = Endpoint(**{key: endpoint[key] for key in ("base_url", "api_key") if endpoint.get(key)})
        self.job_dir = job_dir
        types = {self.grader["type"]} | {g["type"] for g in (self.grader.get("graders") or {}).values()}
        self.threads = GRADING_THREADS if types & WAITING_GRADERS else 1
        self.warned: set[str] = set()

    def grade(self, texts: list[str], items: list[dict], completion_ids: list) -> Graded:
        started = time.monotonic()
        samples = [_as_sample(text) for text in texts]
        if self.threads == 1:
            outcomes = [grade(self.grader, s, i, self.endpoint) for s, i in zip(samples, items, strict=True)]
        else:
            with ThreadPoolExecutor(max_workers=self.threads) as pool:
                outcomes = list(pool.map(lambda s, i: grade(self.grader, s, i, self.endpoint), samples, items))
        for outcome in outcomes:
            self._warn_once(outcome)
        return Graded(outcomes, [len(ids) for ids in completion_ids], time.monotonic() - started)

    def figures(self, graded: Graded, split: str, prefix: str) -> dict:
        """The step's figures about ``graded`` (``split`` "train" or "valid"; flat names start with ``prefix``)."""
        outcomes, name, kind = graded.outcomes, self.grader.get("name", ""), self.grader["type"]
        errors = {"name": name, "type": kind}
        for error in ERROR_KINDS:
            count = sum(_error_kind(outcome) == error for outcome in outcomes)
            errors |= {f"{split}_{error}_mean": count / len(outcomes), f"{split}_{error}_count": count}
        if kind == "multi":
            parts = [(sub.get("name") or key, sub["type"], [o.sub_rewards.get(key, 0.0) for o in outcomes])
                     for key, sub in self.grader["graders"].items()]
        else:
            parts = [(name, kind, [o.reward for o in outcomes])]
        reward = _mean([o.reward for o in outcomes])
        figures = {
            f"{prefix}_reward": reward,
            f"{prefix}_parse_error": _mean([float("sample_parse_error" in o.errors) for o in outcomes]),
            f"{prefix}_grader_error": _mean([float(bool(o.errors)) for o in outcomes]),
            "scores": {f"{split}_reward_mean": reward,
                       "graders": [{"name": n, "type": t, f"{split}_reward_mean": _mean(r)} for n, t, r in parts]},
            "errors": {"graders": [errors]},
        }
        if split == "train":
            figures["completion_tokens_mean"] = _mean(graded.tokens)
        return figures

    def _warn_once(self, outcome: Outcome) -> None:
        for flag, details in outcome.errors.items():
            if flag not in self.warned:
                self.warned.add(flag)
                text = (f"The grader could not grade a sample ({flag}: {str(details)[:300]}); such samples score 0 "
                        "and are counted in the metrics' grader errors")
                reporting.message(self.job_dir, text, level="warn")


def _as_sample(text: str) -> dict:
    """The grader's ``sample`` for one completion: tool calls parsed out as the chat endpoint parses them."""
    content, calls = parse_tool_calls(text)
    for k, call in enumerate(calls):
        call["id"] = f"call_{k}"  # parse_tool_calls draws random ids; rewards must repeat
    return make_sample((content or "") if calls else text, calls or None)


def _error_kind(outcome: Outcome) -> str | None:
    """OpenAI's grader error kind of an outcome: its parse or variable error, other_error for any other failure."""
    if not outcome.errors:
        return None
    return next((kind for kind in ERROR_KINDS[:2] if kind in outcome.errors), "other_error")


def _validate(trainer: GradedGRPOTrainer, grader: Grader, prompts: list[dict], spec: dict) -> dict:
    """The figures of eval_samples completions of every validation prompt (see ``_sample``), and their time."""
    started, hp = time.monotonic(), spec["hyperparameters"]
    ids = [p["prompt_ids"] for p in prompts]
    texts, completion_ids = _sample(trainer, ids, hp["eval_samples"], hp["batch_size"], spec["seed"])
    items = [p["item"] for p in prompts for _ in range(hp["eval_samples"])]
    figures = grader.figures(grader.grade(texts, items, completion_ids), "valid", "full_valid_mean")
    return figures | {"eval_time_s": time.monotonic() - started}


def _merge(train: dict, valid: dict) -> dict:
    """The step's figures with the validation's added, its per-grader entries merged into the training ones."""
    merged = train | {k: v for k, v in valid.items() if k not in ("scores", "errors")}
    scores = train["scores"] | {k: v for k, v in valid["scores"].items() if k != "graders"}
    scores["graders"] = [t | v for t, v in zip(train["scores"]["graders"], valid["scores"]["graders"], strict=True)]
    errors = {"graders": [t | v for t, v in zip(train["errors"]["graders"], valid["errors"]["graders"], strict=True)]}
    return merged | {"scores": scores, "errors": errors}


def _sample(trainer: GradedGRPOTrainer, prompts: list[list[int]], n: int, batch_size: int,
            seed: int) -> tuple[list[str], list]:
    """``n`` completions of every prompt, sampled as in training (same generation config, ``batch_size`` prompts at
    a time) but in eval mode and from a generator of their own seeded with ``seed``; returns their texts and token
    ids, prompt by prompt."""
    model, tokenizer = trainer.model, trainer.processing_class
    eos, pad = set(trainer.eos_token_ids), tokenizer.pad_token_id
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    texts, completion_ids = [], []
    with sampling_policy(model), torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for chunk in attempt.batches(prompts, batch_size):
            repeated = [ids for ids in chunk for _ in range(n)]
            width = max(len(ids) for ids in repeated)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in repeated], device=model.device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in repeated], device=model.device)
            out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=trainer.generation_config)
            for row in out[:, width:].tolist():
                end = next((k + 1 for k, token in enumerate(row) if token in eos), len(row))
                completion_ids.append(row[:end])
                texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return texts, completion_ids


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
