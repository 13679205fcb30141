"""Frozen configuration dataclasses, TOML loading and validation.

Every knob of an experiment lives in one of the dataclasses below. `load_config`
reads a TOML file, rejects unknown keys (with a suggestion), checks types and
ranges, and raises `ConfigError` naming the offending field *before* any
compute starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

TOY_TASK_IDS = (1, 2, 3, 4, 5)
NL_TASK_IDS = (1, 2, 5, 6, 22, 23, 24, 28)  # rlbias_jax.tasks.nl.TASK_NAMES
REWARD_CONDITIONS = ("label", "always_positive")
ALGORITHMS = ("ppo", "grpo", "rloo")
CRITIC_FREE_GROUP_SIZE = 8  # algorithm.group_size = 0 (auto): G for grpo and rloo; ppo samples each prompt once


class ConfigError(ValueError):
    """A user error in a configuration: the message names the field."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str = "toy_default"
    experiment: Literal["toy", "nl"] = "toy"
    out_dir: str = "runs"
    # Iterations per compiled chunk: progress, metrics and checkpoints happen between chunks.
    chunk_iterations: int = 10
    checkpoint_keep: int = 2
    # 0: a checkpoint after every chunk; > 0: after the first chunk that ends at least this
    # many seconds after the previous checkpoint (and always after the last chunk).
    checkpoint_every_s: float = 0.0
    seed: int = 0
    # Whether `rlbias run` measures extractability (MDL) before the RL sweep.
    probe: bool = True
    # Whether `rlbias run` writes the report at the end.
    report: bool = True
    # Multi-host runs (docs/scale_out.md). Unset ("", 0, -1) = from the environment
    # (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), else one process.
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    # Results bitwise equal whatever the device or process count (docs/scale_out.md): switches
    # off XLA:CPU's YNNPACK fusions, whose sums are ordered by the batch shape. Off by
    # default, the fast path; resume on the same device count is bitwise on both paths.
    bitwise_across_devices: bool = False

    def validate(self) -> None:
        _require(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,199}", self.name) is not None, "run.name",
                 f"must be 1-200 letters, digits or _.+=- not starting with '.' (got {self.name!r})")
        _require(bool(self.out_dir) and "\0" not in self.out_dir, "run.out_dir", "must be a non-empty path")
        _positive(self, "run", "chunk_iterations", "checkpoint_keep")
        _require(self.checkpoint_every_s >= 0, "run.checkpoint_every_s", "must be >= 0 (0 = after every chunk)")
        _require(self.seed >= 0, "run.seed", "must be >= 0")
        _require(self.coordinator_address == "" or re.fullmatch(r"[A-Za-z0-9._\-\[\]:]+:\d{1,5}", self.coordinator_address) is not None,
                 "run.coordinator_address", f"must look like host:port (got {self.coordinator_address!r})")
        _require(self.num_processes >= 0, "run.num_processes", "must be >= 0 (0 = from JAX_NUM_PROCESSES, else 1)")
        _require(self.process_id >= -1, "run.process_id", "must be >= 0, or -1 = from JAX_PROCESS_ID")
        if self.num_processes > 0 and self.process_id >= 0:
            _require(self.process_id < self.num_processes, "run.process_id",
                     f"({self.process_id}) must be < run.num_processes ({self.num_processes})")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """The toy tasks of SPEC §3 (or the NL prefix tasks of SPEC §6)."""

    task_ids: tuple[int, ...] = (1, 2, 3, 5)  # toy: the original tasks 1-5 (aliases of their feature pairs)
    # Toy only (docs/features.md): more tasks as [t, s] feature names, e.g. [["count-1>=2", "contains-2"]],
    # and the Python modules (names, or .py paths) that register features, imported first.
    task_pairs: tuple[tuple[str, ...], ...] = ()
    plugins: tuple[str, ...] = ()
    vocab_size: int = 10  # number of symbols V
    seq_len: int = 10
    # Training set: fixed size, a fraction `s_only_rate` of s-only examples, the rest
    # split evenly between both and neither (Lovering et al.).
    train_size: int = 2000
    test_size_both: int = 500
    test_size_neither: int = 500
    test_size_s_only: int = 500
    test_size_t_only: int = 500
    # NL only (SPEC §6): the text corpus ("vader_movie_reviews" bundled, "imdb" from the local
    # HF cache, or a text file path, one text per line) and the prompt length in policy tokens.
    corpus: str = "vader_movie_reviews"
    prompt_len: int = 16

    def validate(self, experiment: str) -> None:
        allowed = TOY_TASK_IDS if experiment == "toy" else NL_TASK_IDS
        _require(len(self.task_ids) + len(self.task_pairs) > 0, "task.task_ids", "must list at least one task (or task.task_pairs)")
        self._validate_pairs(experiment)
        for task_id in self.task_ids:
            _require(task_id in allowed, "task.task_ids", f"unknown task id {task_id} for run.experiment = {experiment!r}; known ids: {list(allowed)}")
        _require(len(set(self.task_ids)) == len(self.task_ids), "task.task_ids", "has duplicates")
        _require(self.vocab_size >= 3, "task.vocab_size", "must be >= 3 (symbols 0, 1, 2 are used by the features)")
        _require(self.seq_len >= 2, "task.seq_len", "must be >= 2")
        if experiment == "toy" and any(task_id != 1 for task_id in self.task_ids):
            # tasks 2-5 need two positions for the target feature and one for the spurious symbol
            _require(self.seq_len >= 3, "task.seq_len", f"must be >= 3 for toy tasks 2-5 (got {self.seq_len})")
        _positive(self, "task", "train_size", "test_size_both", "test_size_neither", "test_size_s_only", "test_size_t_only")

    def _validate_pairs(self, experiment: str) -> None:
        """The shape of task_pairs; feature names are checked by the toy experiment (plugins may add some)."""
        if experiment != "toy":
            _require(not self.task_pairs, "task.task_pairs", "is for run.experiment = 'toy' (NL tasks are task_ids)")
            _require(not self.plugins, "task.plugins", "is for run.experiment = 'toy'")
        for index, pair in enumerate(self.task_pairs):
            field = f"task.task_pairs[{index}]"
            _require(len(pair) == 2 and all(pair), field, f"must be [t, s], two feature names (got {list(pair)})")
            _require(pair[0] != pair[1], field, f"t and s are the same feature {pair[0]!r}; a task needs two different features")
        _require(len(set(self.task_pairs)) == len(self.task_pairs), "task.task_pairs", "has duplicates")
        _require(all(self.plugins), "task.plugins", "must list module names or .py paths")

    def test_sizes(self) -> dict[str, int]:
        return {
            "both": self.test_size_both,
            "neither": self.test_size_neither,
            "s_only": self.test_size_s_only,
            "t_only": self.test_size_t_only,
        }


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The policy. `source = "random"` builds a randomly initialised GPT-2 of the given
    size; other sources load pretrained weights (see rlbias_jax.models.loading)."""

    source: str = "random"
    architecture: Literal["gpt2", "llama"] = "gpt2"
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    max_len: int = 32
    dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    # NL only: 0 = fine-tune every weight (the paper); k > 0 = only the top k blocks, the final
    # norm and the value head train (embeddings and lower blocks frozen and shared by all runs).
    trainable_layers: int = 0

    def validate(self) -> None:
        _positive(self, "model", "n_layer", "n_head", "d_model", "max_len")
        _require(self.trainable_layers >= 0, "model.trainable_layers", "must be >= 0 (0 = all)")
        _require(self.d_model % self.n_head == 0, "model.d_model", f"({self.d_model}) must be divisible by model.n_head ({self.n_head})")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    # toy: "ascending" (ordered digits, SPEC §4) or "threshold" (the one-token variant);
    # NL: "classifier" (± positive logit of `model`, SPEC §6) or "vader_lexicon" (offline, jittable).
    kind: Literal["ascending", "threshold", "classifier", "vader_lexicon"] = "ascending"
    model: str = "lvwerra/distilbert-imdb"  # classifier reward: a local HF folder or a cached repo id
    max_len: int = 128  # classifier reward: its tokens per prompt + response (longer texts truncated)
    # NL only. "label": positive sentiment is rewarded iff the label is 1 (SPEC §6);
    # "always_positive": every prompt is rewarded for positive sentiment (the label is read as 1
    # for the reward only; partitions and evaluation rows unchanged): the pipeline's learning check.
    condition: Literal["label", "always_positive"] = "label"

    def validate(self) -> None:
        _require(self.condition in REWARD_CONDITIONS, "reward.condition",
                 f"unknown value {self.condition!r}; known: {', '.join(REWARD_CONDITIONS)}")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO for language models (SPEC §4, TRL / lm-human-preferences semantics)."""

    iterations: int = 100
    episodes_per_iteration: int = 256
    minibatch_size: int = 64  # episodes per minibatch
    epochs: int = 5
    response_len: int = 5
    # No EOS among the first min_response_len new tokens (the sampler and the teacher-forced
    # log-probs both suppress it); 0 = no minimum. The NL original: min 32, max 48 new tokens.
    min_response_len: int = 0
    temperature: float = 1.0
    learning_rate: float = 1e-4
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    value_clip_eps: float = 0.0  # 0 disables value clipping
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    normalize_advantages: bool = True
    kl_coef: float = 0.0  # initial beta; 0 = no reference penalty
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: float = 10000.0

    def validate(self) -> None:
        _positive(self, "ppo", "iterations", "episodes_per_iteration", "minibatch_size", "epochs", "response_len")
        _require(
            self.episodes_per_iteration % self.minibatch_size == 0,
            "ppo.minibatch_size",
            f"({self.minibatch_size}) must divide ppo.episodes_per_iteration ({self.episodes_per_iteration})",
        )
        _require(0 <= self.min_response_len <= self.response_len, "ppo.min_response_len",
                 f"({self.min_response_len}) must be in [0, ppo.response_len ({self.response_len})]")
        _require(self.temperature > 0, "ppo.temperature", "must be > 0")
        _require(self.learning_rate > 0, "ppo.learning_rate", "must be > 0")
        _require(0 <= self.gamma <= 1, "ppo.gamma", "must be in [0, 1]")
        _require(0 <= self.gae_lambda <= 1, "ppo.gae_lambda", "must be in [0, 1]")
        _require(self.clip_eps > 0, "ppo.clip_eps", "must be > 0")
        for name in ("value_clip_eps", "value_coef", "entropy_coef", "max_grad_norm", "kl_coef", "adam_eps"):
            _require(getattr(self, name) >= 0, f"ppo.{name}", "must be >= 0")
        _require(self.kl_target > 0, "ppo.kl_target", "must be > 0")
        _require(self.kl_horizon > 0, "ppo.kl_horizon", "must be > 0")


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    """The RL algorithm (docs/algorithms.md). PPO is the paper's (SPEC §4); GRPO and RLOO are
    critic-free: G responses per prompt, the group's rewards are each other's baseline, and
    the value head is unused. Every algorithm shares the `[ppo]` sampler, episodes per
    iteration (counted in responses), minibatches, epochs, clip, entropy bonus, optimizer
    and the reward-side KL (ppo.kl_coef); GAE, value loss and whitening are PPO's only."""

    name: str = "ppo"  # "ppo" | "grpo" | "rloo" (ALGORITHMS; checked in validate, with the known names)
    # G, responses sampled per prompt (each prompt repeated G times within an iteration);
    # 0 = the algorithm's default: 1 for ppo, CRITIC_FREE_GROUP_SIZE (8) for grpo and rloo.
    group_size: int = 0
    # GRPO only: "std" = (r - mean) / (std + 1e-4), std with Bessel's correction (DeepSeekMath,
    # TRL); "none" = r - mean (no division; Liu et al. 2025, "Dr. GRPO").
    normalisation: Literal["std", "none"] = "std"
    # GRPO and RLOO: "clipped" = PPO's clipped surrogate on the group advantages; "reinforce" =
    # the unclipped importance-weighted form, the REINFORCE gradient on the first minibatch.
    objective: Literal["clipped", "reinforce"] = "clipped"
    # GRPO and RLOO: beta of the k3 KL to the reference (the initial policy) in the loss
    # (DeepSeekMath: 0.04); 0 = none. PPO's KL penalty is ppo.kl_coef, in the reward.
    kl_coef: float = 0.0

    @property
    def critic_free(self) -> bool:
        return self.name != "ppo"

    def samples_per_prompt(self) -> int:
        if self.group_size > 0:
            return self.group_size
        return CRITIC_FREE_GROUP_SIZE if self.critic_free else 1

    def validate(self, ppo: "PPOConfig") -> None:
        _require(self.name in ALGORITHMS, "algorithm.name", f"unknown algorithm {self.name!r}; known: {', '.join(ALGORITHMS)}")
        _require(self.group_size >= 0, "algorithm.group_size", f"must be >= 0 (0 = the algorithm's default; got {self.group_size})")
        group = self.samples_per_prompt()
        _require(ppo.episodes_per_iteration % group == 0, "algorithm.group_size",
                 f"({group}) must divide ppo.episodes_per_iteration ({ppo.episodes_per_iteration}): episodes count responses, "
                 "G per prompt")
        _require(self.normalisation in ("std", "none"), "algorithm.normalisation", f"unknown value {self.normalisation!r}; known: std, none")
        _require(self.objective in ("clipped", "reinforce"), "algorithm.objective", f"unknown value {self.objective!r}; known: clipped, reinforce")
        _require(self.kl_coef >= 0, "algorithm.kl_coef", f"must be >= 0 (got {self.kl_coef})")
        if self.critic_free:
            _require(group >= 2, "algorithm.group_size",
                     f"must be >= 2 for {self.name} (the group is the baseline; got {group})")
        else:
            # settings ppo would ignore are rejected rather than silently dropped
            _require(self.objective == "clipped", "algorithm.objective", f"{self.objective!r} applies to grpo and rloo; ppo is clipped")
            _require(self.kl_coef == 0, "algorithm.kl_coef", "applies to grpo and rloo; ppo's KL penalty is ppo.kl_coef")
        if self.name != "grpo":
            _require(self.normalisation == "std", "algorithm.normalisation",
                     f"{self.normalisation!r} applies to grpo only (rloo's baseline is leave-one-out, ppo's advantages are GAE)")


def reference_needed(config: "Config") -> bool:
    """Whether the runs need their KL reference (the initial policy): a reward-side or loss-side KL."""
    return config.ppo.kl_coef > 0 or (config.algorithm.critic_free and config.algorithm.kl_coef > 0)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    s_only_rates: tuple[float, ...] = (0.0, 0.01, 0.1, 0.5)
    seeds: int = 2

    def validate(self) -> None:
        _require(len(self.s_only_rates) > 0, "sweep.s_only_rates", "must list at least one rate")
        for rate in self.s_only_rates:
            _require(0.0 <= rate <= 1.0, "sweep.s_only_rates", f"rate {rate} is outside [0, 1]")
        _positive(self, "sweep", "seeds")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    greedy: bool = True
    baseline: bool = True  # evaluate the untrained policies too (baseline.csv)
    # The report drops runs that never learned the task: toy, min(both, neither) below this;
    # NL, neither below this (the paper: 0.7).
    failed_neither_threshold: float = 0.0
    use_target_threshold: float = 0.9  # for "evidence required"
    # τ of the behaviour classes (SPEC §8): a score is high when >= τ, low when <= 1 - τ.
    behaviour_threshold: float = 0.8
    # Whether H1 keeps tasks whose extractability is censored (a probe below probe.min_accuracy).
    h1_include_censored: bool = False

    def validate(self) -> None:
        _require(0 <= self.failed_neither_threshold <= 1, "eval.failed_neither_threshold", "must be in [0, 1]")
        _require(0 <= self.use_target_threshold <= 1, "eval.use_target_threshold", "must be in [0, 1]")
        _require(0.5 < self.behaviour_threshold <= 1, "eval.behaviour_threshold", f"must be in (0.5, 1] so that high and low do not overlap (got {self.behaviour_threshold})")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """MDL online-code probing (SPEC §5; docs/probing.md).

    The paper's schedule: mode = "finetune", schedule = "epochs", epochs_per_block = 10,
    batch_size = 64, learning_rate = 1e-4 (configs/toy_paper.toml).
    """

    mode: Literal["finetune", "policy", "frozen"] = "policy"
    probe_size: int = 2000  # examples per probing set (balanced); at least one per block (11)
    seeds: int = 3
    # "epochs": epochs_per_block passes over each block's prefix (the original procedure);
    # "fixed_steps": steps_per_block minibatches drawn uniformly from the prefix.
    # Defaults: 4 epochs of 32 at lr 1e-3 (paper: 10 of 64 at 1e-4) keep a task's probing at
    # ~10 s on a 2-core CPU for the default policy (plus ~20 s compilation, once per run).
    schedule: Literal["fixed_steps", "epochs"] = "epochs"
    steps_per_block: int = 100
    epochs_per_block: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-3
    # L2 penalty (weight_decay / 2) * sum of squared weight matrices, added to the mean loss.
    weight_decay: float = 0.0
    # How the probe runs share the compiled program: "lanes" = vmap over (probe, seed[, layer]),
    # blocks in sequence; "lanes_and_blocks" = vmap over blocks too; "none" = lax.map, no vmap.
    vectorize: Literal["lanes", "lanes_and_blocks", "none"] = "lanes"
    eval_batch_size: int = 256
    # finetune-mode encoder (SPEC §5 toy original)
    encoder_layers: int = 2
    encoder_width: int = 256
    encoder_heads: int = 4
    encoder_ff: int = 2048
    dropout: float = 0.1
    head_dropout: float = 0.5
    # frozen mode: probes on every layer's last-position hidden state
    frozen_head: Literal["linear", "mlp"] = "linear"
    frozen_mlp_width: int = 256
    # Lovering's control: a probe whose held-out accuracy is below this did not learn its
    # feature, so its MDL is a floor, not a value; the task's row is marked censored.
    min_accuracy: float = 0.9

    def validate(self) -> None:
        _require(self.mode in ("finetune", "policy", "frozen"), "probe.mode", f"unknown probe mode {self.mode!r}; known: finetune, policy, frozen")
        _require(self.schedule in ("fixed_steps", "epochs"), "probe.schedule", f"unknown schedule {self.schedule!r}; known: fixed_steps, epochs")
        _require(self.vectorize in ("lanes", "lanes_and_blocks", "none"), "probe.vectorize",
                 f"unknown value {self.vectorize!r}; known: lanes, lanes_and_blocks, none")
        _positive(self, "probe", "probe_size", "seeds", "steps_per_block", "epochs_per_block", "batch_size", "eval_batch_size",
                  "encoder_layers", "encoder_width", "encoder_heads", "encoder_ff", "frozen_mlp_width")
        # the online code has 11 blocks (rlbias_jax.probing.blocks.NUM_BLOCKS), none of them empty
        _require(self.probe_size >= 11, "probe.probe_size", f"must be >= 11, one example per online-code block (got {self.probe_size})")
        _require(self.learning_rate > 0, "probe.learning_rate", "must be > 0")
        _require(self.weight_decay >= 0, "probe.weight_decay", "must be >= 0")
        _require(0 <= self.min_accuracy <= 1, "probe.min_accuracy", f"must be in [0, 1] (got {self.min_accuracy})")
        _require(self.encoder_width % self.encoder_heads == 0, "probe.encoder_width",
                 f"({self.encoder_width}) must be divisible by probe.encoder_heads ({self.encoder_heads})")
        for name in ("dropout", "head_dropout"):
            _require(0 <= getattr(self, name) < 1, f"probe.{name}", "must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class Config:
    run: RunConfig = RunConfig()
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig = PPOConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    sweep: SweepConfig = SweepConfig()
    eval: EvalConfig = EvalConfig()
    probe: ProbeConfig = ProbeConfig()

    def validate(self) -> "Config":
        self.run.validate()
        self.task.validate(self.run.experiment)
        self.model.validate()
        self.reward.validate()
        self.ppo.validate()
        self.algorithm.validate(self.ppo)
        self.sweep.validate()
        self.eval.validate()
        self.probe.validate()
        if self.run.experiment == "toy":
            needed = self.task.seq_len + self.ppo.response_len
            _require(self.model.max_len >= needed, "model.max_len", f"({self.model.max_len}) must be >= task.seq_len + ppo.response_len ({needed})")
            _require(self.reward.kind in ("ascending", "threshold"), "reward.kind",
                     f"{self.reward.kind!r} is an NL reward; run.experiment = 'toy' uses ascending or threshold")
            # NL-only settings are rejected rather than silently ignored
            _require(self.reward.condition == "label", "reward.condition",
                     f"{self.reward.condition!r} is an NL positive control; run.experiment = 'toy' rewards by label only")
            _require(self.ppo.min_response_len == 0, "ppo.min_response_len",
                     "must be 0 for run.experiment = 'toy' (its responses are scored as they come, SPEC §4)")
        else:
            self._validate_nl()
        return self

    def _validate_nl(self) -> None:
        _require(self.reward.kind in ("classifier", "vader_lexicon"), "reward.kind",
                 f"{self.reward.kind!r} is a toy reward; run.experiment = 'nl' uses classifier or vader_lexicon")
        _require(self.model.source != "random", "model.source", "run.experiment = 'nl' needs a pretrained model with a tokenizer (e.g. \"smollm2\")")
        _require(bool(self.task.corpus), "task.corpus", "must name a corpus")
        _require(self.task.prompt_len >= 4, "task.prompt_len", f"must be >= 4 tokens (got {self.task.prompt_len})")
        _require(self.reward.max_len >= 8, "reward.max_len", f"must be >= 8 (got {self.reward.max_len})")
        if self.run.probe:
            _require(self.probe.probe_size >= 22, "probe.probe_size", f"must be >= 22 for the NL tasks (got {self.probe.probe_size})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_model_context(config: Config, max_positions: int, source: str) -> None:
    """NL: a prompt and its response must fit in the pretrained model's positions (known once its
    config is read); ConfigError naming ppo.response_len, raised before any compute."""
    needed = config.task.prompt_len + config.ppo.response_len
    _require(needed <= max_positions, "ppo.response_len",
             f"task.prompt_len + ppo.response_len = {config.task.prompt_len} + {config.ppo.response_len} = {needed} tokens "
             f"exceed the {max_positions} positions of the model {source}")


# ---------------------------------------------------------------------------
# Loading


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


def _positive(obj: Any, section: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value > 0, f"{section}.{name}", f"must be > 0 (got {value})")


def _coerce(value: Any, annotation: Any, field: str) -> Any:
    """Check `value` against a (simple) type annotation and coerce int->float, list->tuple."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        _require(value in choices, field, f"must be one of {list(choices)} (got {value!r})")
        return value
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(annotation):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, field)
            except ConfigError:
                continue
        raise ConfigError(f"{field}: has the wrong type ({type(value).__name__})")
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), field, f"must be a list (got {type(value).__name__})")
        (item_type, *_rest) = typing.get_args(annotation)
        return tuple(_coerce(item, item_type, f"{field}[{i}]") for i, item in enumerate(value))
    if annotation is bool:
        _require(isinstance(value, bool), field, f"must be true or false (got {value!r})")
        return value
    if annotation is int:
        _require(isinstance(value, int) and not isinstance(value, bool), field, f"must be an integer (got {value!r})")
        _require(-(2**31) <= value < 2**31, field, f"must fit in 32 bits (got {value})")
        return value
    if annotation is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), field, f"must be a number (got {value!r})")
        value = float(value)
        _require(value == value and abs(value) != float("inf"), field, "must be finite")
        return value
    if annotation is str:
        _require(isinstance(value, str), field, f"must be a string (got {value!r})")
        return value
    return value


def _printable(key: Any) -> str:
    """A key as typed, or quoted when it would break the one-line message."""
    return key if isinstance(key, str) and key.isprintable() else repr(key)


def _build(cls: type, data: Any, section: str) -> Any:
    _require(isinstance(data, dict), section, f"must be a table (got {type(data).__name__})")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{section}.{_printable(key)}: unknown key{hint}")
        field = f"{section}.{key}"
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, field)
        else:
            kwargs[key] = _coerce(value, hints[key], field)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested dict (as read from TOML)."""
    hints = typing.get_type_hints(Config)
    sections = {f.name for f in dataclasses.fields(Config)}
    kwargs = {}
    for key, value in data.items():
        if key not in sections:
            close = difflib.get_close_matches(key, sorted(sections), n=1)
            hint = f"; did you mean '[{close[0]}]'?" if close else f"; known sections: {', '.join(sorted(sections))}"
            raise ConfigError(f"[{_printable(key)}]: unknown section{hint}")
        kwargs[key] = _build(hints[key], value, key)
    return Config(**kwargs).validate()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read, merge overrides into, and validate a TOML config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {error.start} is 0x{error.object[error.start]:02x}); "
                          "a config is TOML, e.g. configs/toy_default.toml") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    if not data and not overrides:
        # an empty file would otherwise start a full run with every default
        raise ConfigError(f"{path}: the config is empty; it needs at least a [run] section "
                          "(e.g. [run] name = \"my_run\"; start from configs/toy_default.toml)")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        _require(bool(key), dotted, "override must look like section.key=value")
        data.setdefault(section, {})[key] = value
    return config_from_dict(data)


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    """Return a copy with some fields of some sections replaced, re-validated."""
    updated = {
        name: dataclasses.replace(getattr(config, name), **changes) for name, changes in sections.items()
    }
    return dataclasses.replace(config, **updated).validate()
