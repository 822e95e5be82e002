"""The fast paths of DPO and RFT change no result: real training of the tiny model through ``openft.train``'s own
entry point, compared with the same job computed the plain way.

DPO's fast path scores each pair as one row (prompt once, both completions after it) and sends only the positions
that predict a completion token through the LM head; the plain way is TRL's padded [chosen; rejected] batch, full
logits, a log-softmax over the whole vocabulary and a gather of the completion tokens. Per-step losses and figures
must agree within float tolerance over a whole run (two epochs, with validation).

RFT's fast path samples all completions of a step in one batched, left-padded ``generate`` call; greedy decoding of
a batch must give exactly the completions of one prompt at a time. RFT's training forward scores each prompt's
completions in one row after the prompt; with LoRA dropout 0 (no random draw in the forward) its losses and
weights must equal TRL's own loss within float tolerance. (With dropout, the masks are drawn over the other layout:
the same distribution, other draws, so a run cannot be compared step by step.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openft import jobdir

from openft.train import dpo
from openft.train.__main__ import run_attempt
from tests.test_trainer_dpo import new_job, per_step, preference_rows, write_jsonl
from tests.test_trainer_sft import records

FIGURES = ["loss", "reward_margin", "reward_accuracy", "chosen_logps", "rejected_logps"]


@pytest.fixture(autouse=True)
def one_thread():
    """These runs train in this process, whose OpenMP threads spin (the trainer's own process sets them passive
    before torch loads): on a busy machine spinning threads make a tiny model's step take seconds, not ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def plain_collate(pairs: list[dict]) -> dict[str, torch.Tensor]:
    """TRL's own preference batch: prompt + chosen rows, then prompt + rejected rows, right-padded."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference(pad_token_id=0)(pairs)


def plain_pair_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Full logits, log-softmax over the vocabulary, the completion tokens' log-probs summed per sequence."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    sums = (logps * batch["completion_mask"][:, 1:]).sum(dim=1)
    return sums.chunk(2)


@pytest.fixture(scope="module")
def dpo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefs")
    return {"train": write_jsonl(folder / "train.jsonl", preference_rows(10, seed=1)),
            "valid": write_jsonl(folder / "valid.jsonl", preference_rows(3, seed=2))}


def dpo_run(job_dir, tiny_model, files) -> dict:
    hyperparameters = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0, "learning_rate": 5e-3,
                       "beta": 0.1}
    new_job(job_dir, tiny_model, files, hyperparameters=hyperparameters)
    torch.manual_seed(0)  # the LoRA weights are drawn before the Trainer seeds: same draw for both runs
    return run_attempt(job_dir)


def test_dpo_fast_path_losses_equal_the_plain_computation_step_by_step(tmp_path, tiny_model, dpo_files,
                                                                       monkeypatch):
    fast = tmp_path / "fast"
    assert dpo_run(fast, tiny_model, dpo_files)["status"] == "succeeded"
    with monkeypatch.context() as patch:
        patch.setattr(dpo, "collate", plain_collate)
        patch.setattr(dpo, "pair_logps", plain_pair_logps)
        plain = tmp_path / "plain"
        assert dpo_run(plain, tiny_model, dpo_files)["status"] == "succeeded"

    steps = [r["data"]["step"] for r in records(fast, "metrics")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert per_step(fast, "train_loss")[1] == pytest.approx(math.log(2), abs=1e-6)  # the policy is the reference
    for split in ("train", "valid"):
        for figure in FIGURES:
            got, want = per_step(fast, f"{split}_{figure}"), per_step(plain, f"{split}_{figure}")
            assert got == pytest.approx(want, rel=1e-4, abs=1e-5), f"{split}_{figure}"
    for figure in FIGURES:  # epoch ends: the whole validation set
        got = per_step_optional(fast, f"full_valid_{figure}")
        assert got and got == pytest.approx(per_step_optional(plain, f"full_valid_{figure}"), rel=1e-4, abs=1e-5)
    # Learning happened, so the comparison covered trained weights, not only the start.
    assert per_step(fast, "train_reward_margin")[6] != 0


def per_step_optional(job_dir, key: str) -> dict[int, float]:
    return {r["data"]["step"]: r["data"][key] for r in records(job_dir, "metrics") if key in r["data"]}


def test_dpo_collate_lets_the_rejected_completion_see_the_prompt_but_never_the_chosen_one():
    batch = dpo.collate([{"prompt_ids": [5, 6], "chosen_ids": [7, 8], "rejected_ids": [9]},
                         {"prompt_ids": [5], "chosen_ids": [], "rejected_ids": [3, 4]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 3, 4, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 0, 0]]
    mask = batch["attention_mask"][:, 0].int().tolist()
    assert mask[0][4] == [1, 1, 0, 0, 1]  # rejected token: prompt and itself
    assert mask[0][3] == [1, 1, 1, 1, 0]
    assert mask[1][3] == [0, 0, 0, 1, 0]  # padding: itself only
    # chosen 7 and rejected 9 are both predicted at the prompt's last position (flat 1), 8 at 7's (flat 2) ...
    assert batch["sources"].tolist() == [1, 2, 1, 5, 6]
    assert batch["targets"].tolist() == [7, 8, 9, 3, 4]
    assert batch["owners"].tolist() == [0, 0, 1, 3, 3]  # pair i's chosen is completion 2i, its rejected 2i + 1


def test_rft_fast_path_losses_and_weights_equal_trls_own_loss_step_by_step(tmp_path, tiny_model, monkeypatch):
    from trl import GRPOTrainer

    from openft.train import rft
    from tests.test_trainer_rft import STRING_GRADER, rft_rows

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rft_rows(6, 0)))

    def job(name: str) -> Path:
        job_dir = tmp_path / name
        job_dir.mkdir()
        hyperparameters = {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 1.0, "learning_rate": 2e-2,
                           "compute_multiplier": 0.75, "eval_interval": 100, "eval_samples": 1,
                           "reasoning_effort": "low"}
        spec = {"job_id": "ftjob_" + "3" * 32, "method": "reinforcement", "base_model": "tiny",
                "base_model_path": str(tiny_model), "training_file": str(data), "validation_file": None,
                "hyperparameters": hyperparameters, "grader": STRING_GRADER, "seed": 42,
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "max_length": 96, "resume_from": None, "attempt": 1}
        jobdir.write_json_atomic(job_dir / jobdir.SPEC, spec)
        torch.manual_seed(0)
        assert run_attempt(job_dir)["status"] == "succeeded"
        return job_dir

    fast = job("fast")

    def trls_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = GRPOTrainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        self.last_loss = float(loss.detach())
        return loss

    with monkeypatch.context() as patch:
        patch.setattr(rft.GradedGRPOTrainer, "compute_loss", trls_loss)
        plain = job("plain")

    assert per_step(fast, "completion_tokens_mean") == per_step(plain, "completion_tokens_mean")
    assert per_step(fast, "train_mean_reward") == per_step(plain, "train_mean_reward")
    assert per_step(fast, "train_loss") == pytest.approx(per_step(plain, "train_loss"), rel=1e-4, abs=1e-6)
    got, want = (load_file(j / "checkpoints" / "final" / "adapter_model.safetensors") for j in (fast, plain))
    assert got.keys() == want.keys()
    for name in got:
        assert torch.allclose(got[name], want[name], rtol=1e-3, atol=1e-5), name
    # Training moved the adapter (B starts at 0), so the comparison covered the gradients.
    assert any(name.endswith("lora_B.weight") and got[name].abs().max() > 0 for name in got)


def test_rft_samples_a_batch_with_the_merged_adapter_exactly_as_one_prompt_at_a_time_unmerged(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openft.train import data, rft
    from tests.test_trainer_rft import rft_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    path = Path(tiny_model) / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rft_rows(5, 0)))
    prompts = [p["prompt_ids"] for p in data.tokenize_prompt_file(path, tokenizer, None)[0]]
    prompts[1] = prompts[1][-7:]  # lengths differ: the batch is left-padded
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear"))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.05)  # an adapter that changes the answers
    before = {name: weight.clone() for name, weight in model.state_dict().items()}
    settings = {"do_sample": False, "max_new_tokens": 12, "pad_token_id": 0, "eos_token_id": None,
                "output_scores": True, "return_dict_in_generate": True}

    def alone() -> tuple[list, torch.Tensor]:
        """Each prompt on its own: completions and next-token scores, (prompts, steps, vocabulary)."""
        outs = [model.generate(input_ids=torch.tensor([ids]), **settings) for ids in prompts]
        return ([o.sequences[0, len(ids):].tolist() for o, ids in zip(outs, prompts, strict=True)],
                torch.stack([torch.cat(o.scores) for o in outs]))

    model.eval()
    completions, scores = alone()
    with model.disable_adapter():
        _, base_scores = alone()
    model.train()
    width = max(map(len, prompts))
    with rft.sampling_policy(model):
        assert not model.training
        out = model.generate(
            input_ids=torch.tensor([[0] * (width - len(ids)) + ids for ids in prompts]),
            attention_mask=torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts]), **settings)
    # The same greedy completions, and the same distribution at every step (what sampling draws from).
    assert out.sequences[:, width:].tolist() == completions
    assert torch.allclose(torch.stack(out.scores, dim=1), scores, atol=1e-4)
    assert not torch.allclose(base_scores, scores, atol=1e-2)  # the adapter matters: its merge was exercised
    # Bit for bit the weights it started with, LoRA active again, training mode back.
    assert model.training
    assert all(torch.equal(before[name], weight) for name, weight in model.state_dict().items())
    model.eval()
    assert torch.equal(alone()[1], scores)
