"""The TRL side of `ppo_vs_trl.py`: TRL's PPOTrainer on the toy task, timed per update.

Runs in its own virtual environment (torch CPU + trl==1.12.0, made by
`benchmarks/setup_trl_venv.sh`); `ppo_vs_trl.py` starts it as a subprocess and reads
the JSON it prints as its last line. Not importable from rlbias_jax on purpose: it
must not depend on JAX.

    python benchmarks/trl_side.py SETTINGS.json

SETTINGS holds the model size, PPO settings, the training prompts and labels (so the
reward sees the same data as ours) and how many updates to time.

What TRL needs that the toy task does not have, and how it is supplied:
  - a tokenizer: a word-level tokenizer over the 12 toy symbols (no hub access);
  - a reward *model*: `OrderedDigitsReward` below, a torch module with TRL's
    reward-model interface (`base_model_prefix` backbone + `score`) that computes the
    ordered-digits reward of SPEC §4 by rule; the label of a prompt is looked up in the
    training set (TRL hands the reward model only the token ids);
  - a value model: TRL trains a separate GPT-2 of the same size with a scalar head
    (`GPT2ForSequenceClassification`, num_labels=1); ours shares the policy's trunk.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402
from torch import nn  # noqa: E402


class _RewardBackbone(nn.Module):
    """Puts the episode's rule-based reward on every position of a [B, T, 1] 'hidden state'."""

    def __init__(self, prompt_keys: torch.Tensor, prompt_labels: torch.Tensor, num_symbols: int, vocab_size: int, prompt_len: int):
        super().__init__()
        order = torch.argsort(prompt_keys)
        self.register_buffer("keys", prompt_keys[order])
        self.register_buffer("labels", prompt_labels[order])
        self.register_buffer("powers", vocab_size ** torch.arange(prompt_len, dtype=torch.int64))
        self.num_symbols = num_symbols
        self.prompt_len = prompt_len

    def label_of(self, prompts: torch.Tensor) -> torch.Tensor:
        keys = (prompts.long() * self.powers).sum(-1)
        index = torch.searchsorted(self.keys, keys).clamp(max=self.keys.numel() - 1)
        if not torch.equal(self.keys[index], keys):
            raise KeyError("a prompt that is not in the training set reached the reward model")
        return self.labels[index]

    def forward(self, input_ids, attention_mask, **_):
        prompts, response = input_ids[:, : self.prompt_len], input_ids[:, self.prompt_len :]
        # TRL replaces PAD (= our EOS) by 0 in input_ids; the attention mask still tells them apart
        valid = attention_mask[:, self.prompt_len :].bool()
        is_digit = valid & (response >= 0) & (response < self.num_symbols)
        order = torch.argsort((~is_digit).to(torch.int8), dim=1, stable=True)
        digits = torch.gather(response, 1, order)
        n_digits = is_digit.sum(1, keepdim=True)
        length = response.shape[1]
        ascending = digits[:, 1:] > digits[:, :-1]
        descending = digits[:, 1:] < digits[:, :-1]
        label = self.label_of(prompts)[:, None]
        correct = torch.where(label == 1, ascending, descending)
        pair_exists = torch.arange(1, length)[None, :] < n_digits
        run = torch.cumprod((correct & pair_exists).to(torch.int32), dim=1)
        reward = run.sum(1).float() / max(length - 1, 1)
        hidden = reward[:, None, None].expand(-1, input_ids.shape[1], 1)
        return types.SimpleNamespace(hidden_states=(hidden,))


class OrderedDigitsReward(nn.Module):
    """The ordered-digits reward (SPEC §4) behind TRL's reward-model interface."""

    base_model_prefix = "backbone"

    def __init__(self, **kwargs):
        super().__init__()
        self.backbone = _RewardBackbone(**kwargs)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def toy_tokenizer(num_symbols: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {str(i): i for i in range(num_symbols)}
    vocab["<eos>"] = num_symbols
    vocab["<unk>"] = num_symbols + 1
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")


def build_trainer(settings: dict, step_times: list[float]):
    from datasets import Dataset
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    model, ppo = settings["model"], settings["ppo"]
    num_symbols = settings["num_symbols"]
    torch.manual_seed(settings["seed"])
    gpt2 = GPT2Config(
        vocab_size=num_symbols + 2, n_positions=model["max_len"], n_embd=model["d_model"], n_layer=model["n_layer"],
        n_head=model["n_head"], activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=num_symbols, eos_token_id=num_symbols, pad_token_id=num_symbols, num_labels=1,
    )
    policy = GPT2LMHeadModel(gpt2)
    policy.generation_config.eos_token_id = num_symbols
    policy.generation_config.pad_token_id = num_symbols
    value_model = GPT2ForSequenceClassification(gpt2)
    prompts = torch.tensor(settings["prompts"], dtype=torch.int64)
    labels = torch.tensor(settings["labels"], dtype=torch.int64)
    prompt_len = prompts.shape[1]
    powers = (num_symbols + 2) ** torch.arange(prompt_len, dtype=torch.int64)
    reward = OrderedDigitsReward(prompt_keys=(prompts * powers).sum(-1), prompt_labels=labels, num_symbols=num_symbols,
                                 vocab_size=num_symbols + 2, prompt_len=prompt_len)
    dataset = Dataset.from_dict({"input_ids": prompts.tolist()})

    def collate(features):
        return {"input_ids": torch.tensor([f["input_ids"] for f in features], dtype=torch.int64)}

    episodes = ppo["episodes_per_iteration"]
    args = PPOConfig(
        output_dir=settings["output_dir"],
        per_device_train_batch_size=episodes,  # one rollout batch per update ...
        gradient_accumulation_steps=1,
        num_mini_batches=episodes // ppo["minibatch_size"],  # ... one optimizer step per minibatch
        local_rollout_forward_batch_size=episodes,
        total_episodes=episodes * settings["updates"],
        num_ppo_epochs=ppo["epochs"],
        learning_rate=ppo["learning_rate"],
        lr_scheduler_type="constant",
        adam_epsilon=ppo["adam_eps"],
        weight_decay=0.0,
        response_length=ppo["response_len"],
        temperature=ppo["temperature"],
        stop_token_id=num_symbols,
        kl_coef=ppo["kl_coef"],
        cliprange=ppo["clip_eps"],
        vf_coef=ppo["value_coef"],
        cliprange_value=1e6 if ppo["value_clip_eps"] == 0 else ppo["value_clip_eps"],  # ours: no value clipping
        gamma=ppo["gamma"],
        lam=ppo["gae_lambda"],
        bf16=settings.get("bf16", False),
        fp16=False,
        gradient_checkpointing=False,  # TRL's default is True, which recomputes the forward pass
        num_sample_generations=0,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=settings["seed"],
        dataloader_num_workers=0,
    )

    class StepTimer(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            step_times.append((time.perf_counter(), usage.ru_utime + usage.ru_stime))

    return PPOTrainer(
        args=args, processing_class=toy_tokenizer(num_symbols), model=policy, ref_model=None, reward_model=reward,
        train_dataset=dataset, value_model=value_model, data_collator=collate, callbacks=[StepTimer()],
    ), policy, value_model


def choose_threads(settings: dict, candidates: list[int], repeats: int = 3) -> dict:
    """Time a policy + value forward/backward on one minibatch with each thread count, round-robin.

    On a machine shared with other users' processes, torch's OpenMP threads can be many
    times slower with 2 threads than with 1 (spinning workers lose their cores), so TRL
    gets whichever count is faster here and now."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    model, ppo = settings["model"], settings["ppo"]
    config = GPT2Config(vocab_size=settings["num_symbols"] + 2, n_positions=model["max_len"], n_embd=model["d_model"],
                        n_layer=model["n_layer"], n_head=model["n_head"], num_labels=1, pad_token_id=settings["num_symbols"])
    policy, value = GPT2LMHeadModel(config), GPT2ForSequenceClassification(config)
    length = len(settings["prompts"][0]) + ppo["response_len"]
    tokens = torch.randint(0, settings["num_symbols"], (ppo["minibatch_size"], length))
    times: dict[int, list[float]] = {threads: [] for threads in candidates}
    for _ in range(repeats + 1):
        for threads in candidates:
            torch.set_num_threads(threads)
            started = time.perf_counter()
            (policy(input_ids=tokens).logits.sum() + value(input_ids=tokens).logits.sum()).backward()
            times[threads].append(time.perf_counter() - started)
    best = {threads: min(values[1:]) for threads, values in times.items()}
    chosen = min(best, key=best.get)
    torch.set_num_threads(chosen)
    return {"chosen": chosen, "probe_seconds": {str(k): v for k, v in best.items()}}


def main() -> None:
    settings = json.loads(open(sys.argv[1]).read())
    threads = {"chosen": torch.get_num_threads(), "probe_seconds": {}}
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
        threads["chosen"] = settings["threads"]
    else:
        threads = choose_threads(settings, sorted({1, torch.get_num_threads()}))
    import transformers
    import trl

    step_times: list[tuple[float, float]] = []  # (wall, process CPU) at the end of each update
    setup_started = time.perf_counter()
    trainer, policy, value_model = build_trainer(settings, step_times)
    train_started = time.perf_counter()
    trainer.train()
    finished = time.perf_counter()
    warmup = settings["warmup_updates"]
    if warmup < 1:
        raise ValueError("warmup_updates must be >= 1 (the first update starts the clock)")
    marks = step_times[warmup - 1 :]
    update_seconds = [b[0] - a[0] for a, b in zip(marks[:-1], marks[1:])]
    update_cpu_seconds = [b[1] - a[1] for a, b in zip(marks[:-1], marks[1:])]
    episodes = settings["ppo"]["episodes_per_iteration"]
    result = {
        "versions": {"torch": torch.__version__, "trl": trl.__version__, "transformers": transformers.__version__},
        "torch_threads": torch.get_num_threads(),
        "thread_choice": threads,
        "setup_seconds": train_started - setup_started,
        "train_seconds": finished - train_started,
        "updates": len(step_times),
        "warmup_updates": warmup,
        "update_seconds": update_seconds,
        "update_cpu_seconds": update_cpu_seconds,
        "episodes_per_s": episodes * len(update_seconds) / sum(update_seconds),
        "episodes_per_s_best_update": episodes / min(update_seconds),
        "policy_parameters": sum(p.numel() for p in policy.parameters()),
        "value_parameters": sum(p.numel() for p in value_model.parameters()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
