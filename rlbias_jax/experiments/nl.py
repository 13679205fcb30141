"""The natural-language experiment of Cruz et al. (SPEC §6): a pretrained LM learns to write
positively iff a prefix feature holds, with PPO, a frozen reference and adaptive KL.

What differs from the toy experiment is what is shared. The pretrained weights are split
into a *trainable* part, copied per run (with its Adam state), and a *frozen* part that
every run shares, passed once into the programs (`SharedParams`, vmapped with in_axes
None, never copied):

- `model.trainable_layers = 0` (the paper): everything is trainable; the frozen part is
  empty and the reference is one shared copy of the initial weights.
- `model.trainable_layers = k > 0` (the CPU default's scale-down): only the top k
  transformer blocks, the final norm and the value head train; the embeddings (tied
  with the output head) and the lower blocks are frozen and shared by the policies and
  the reference, whose own copy is only the initial top blocks.

The reward model's parameters (or the lexicon tables) travel in `SharedParams` as well.

Keys: a run's rollout stream depends on (task, rate index, seed); evaluation keys on
(task, rate index, seed, partition); data on the task and seed (`rlbias_jax.tasks.nl`).
Probing: `fold_in(key, task_id)` per task, split into the block-order, probe-init and
probe-training keys.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rlbias_jax.config import Config, ConfigError, check_model_context
from rlbias_jax.experiments.base import KeyTag, Progress, RunSpec, Shared, stream
from rlbias_jax.models import split
from rlbias_jax.models.heads import PolicyValueModel
from rlbias_jax.models.sampling import SamplingConfig
from rlbias_jax.probing.extractability import PROBES, ProbeTask
from rlbias_jax.probing.probes import ProbeModel, frozen_probe, layer_features, pretrained_probe
from rlbias_jax.rl.ppo import make_optimizer
from rlbias_jax.rl.sentiment import ClassifierReward, LexiconReward, classifier_reward, normalised_score
from rlbias_jax.rl.train import Policy, RunData, RunState, init_run_state
from rlbias_jax.tasks import nl as nl_tasks
from rlbias_jax.tasks.corpus import load_corpus

_BLOCK = re.compile(r"^(?:h|layers)_(\d+)$")
_FINAL_NORMS = ("ln_f", "norm", "final_layer_norm")


@flax.struct.dataclass
class SharedParams:
    """Passed once into the sweep program and shared by every run (vmap in_axes None)."""

    frozen: dict  # LM parameters that never train (may be empty)
    reference: dict  # the initial trainable parameters: the KL reference's own part
    reward: object  # reward-model parameters or lexicon tables


# SPLITTING THE WEIGHTS


def split_params(params: dict, trainable_layers: int) -> tuple[dict, dict]:
    """(trainable, frozen) halves of PolicyValueModel params {"lm": …, "value_head": …}.

    trainable_layers = 0: everything trains. k > 0: the top k blocks, the final norm and
    the value head train; embeddings, lower blocks and any untied output head are frozen.
    """
    if trainable_layers == 0:
        return params, {}
    lm = params["lm"]
    blocks = sorted(int(m.group(1)) for m in map(_BLOCK.match, lm) if m)
    if not blocks:
        raise ValueError(f"cannot find transformer blocks among the LM parameters {sorted(lm)}")
    if trainable_layers > len(blocks):
        raise ValueError(f"model.trainable_layers = {trainable_layers}, but the model has only {len(blocks)} blocks")
    first = len(blocks) - trainable_layers

    def trains(name: str) -> bool:
        match = _BLOCK.match(name)
        return (match is not None and int(match.group(1)) >= first) or name in _FINAL_NORMS

    trainable = {"lm": {k: v for k, v in lm.items() if trains(k)}, "value_head": params["value_head"]}
    frozen = {"lm": {k: v for k, v in lm.items() if not trains(k)}}
    return trainable, frozen


def frozen_in_bfloat16(frozen: dict) -> dict:
    """The frozen blocks' matmul kernels stored in bfloat16, for model.dtype = "bfloat16".

    bf16 compute rounds every matmul operand to bf16 anyway; stored so, the kernels are not
    converted again in every program and take half the memory traffic. The embedding table
    stays float32 (its input rows are read in float32; stored in bf16, XLA converted the
    whole table back to float32 once per program), as do the norm scales."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.astype(jnp.bfloat16) if getattr(path[-1], "key", None) == "kernel" else x, frozen)


def merge_params(trainable: dict, frozen: dict) -> dict:
    """The full parameter tree again (a pure restructuring: no copies under jit)."""
    if not frozen:
        return trainable
    return {"lm": {**frozen["lm"], **trainable["lm"]}, "value_head": trainable["value_head"]}


# THE POLICY


@dataclasses.dataclass(frozen=True, eq=False)
class NLSetup:
    """Host-side pieces of the experiment: the model, tokenizer, reward and data."""

    config: Config
    model: PolicyValueModel
    model_config: object
    tokenizer: nl_tasks.TextTokenizer
    reward: LexiconReward | ClassifierReward
    sampling: SamplingConfig
    initial_trainable: dict
    frozen: dict
    loaded: object  # rlbias_jax.models.loading.LoadedModel

    def build_policy(self, shared: SharedParams) -> Policy:
        """The Policy of one program; `shared` may be traced (its arrays are arguments, not constants)."""
        # with a frozen trunk, apply_fn only samples (the teacher-forced passes run `split.top`): it also
        # returns the trunk's output (features_layer), which those passes reuse instead of running the
        # trunk again, and the logits of the last position only, the sampler's
        first = self.first_trainable_block if self.frozen else None
        model = PolicyValueModel(self.model.lm, features_layer=first, last_logits_only=bool(self.frozen))

        def apply_fn(trainable, tokens, positions, mask, cache):
            params = merge_params(trainable, shared.frozen)
            return model.apply({"params": params}, tokens, positions=positions, attention_mask=mask, cache=cache)

        features_fn = teacher_fn = None
        if self.frozen:
            # trainable top per pass on the frozen trunk's output (rlbias_jax.models.split)
            response_len = self.config.ppo.response_len

            def features_fn(tokens):
                # used only where the sampler's features are missing; the last token emits nothing
                return split.trunk(model.lm, shared.frozen["lm"], tokens[:, :-1], first)

            def teacher_fn(trainable, features, positions, mask, cache):
                del positions, mask, cache  # full, unpadded sequences
                lm = {**shared.frozen["lm"], **trainable["lm"]}
                return split.top(model.lm, lm, trainable["value_head"], features, first, response_len)

        return Policy(
            apply_fn=apply_fn,
            init_cache=self.model_config.init_cache,
            score_fn=self.reward.score_fn(shared.reward),
            sampling=self.sampling,
            optimizer=make_optimizer(self.config.ppo),
            features_fn=features_fn,
            teacher_fn=teacher_fn,
        )

    @property
    def first_trainable_block(self) -> int:
        return self.model_config.n_layer - self.config.model.trainable_layers

    def shared(self) -> SharedParams:
        return SharedParams(frozen=self.frozen, reference=self.initial_trainable, reward=self.reward.params())


def load_setup(config: Config, progress: Callable[[str], None] = print) -> NLSetup:
    """Load the pretrained policy, its tokenizer and the reward (errors name what is missing)."""
    from rlbias_jax.models.loading import ModelLoadError, load_pretrained

    loaded = load_pretrained(config.model.source, dtype=config.model.dtype, param_dtype=config.model.param_dtype)
    check_model_context(config, loaded.config.max_len, loaded.source)
    if loaded.tokenizer is None:
        raise ModelLoadError(f"the policy checkpoint {loaded.source} has no tokenizer; the NL tasks need one")
    tokenizer = nl_tasks.HFTokenizer(loaded.tokenizer)
    model = PolicyValueModel(loaded.module)
    width = loaded.config.d_model
    params = {"lm": loaded.params, "value_head": {"kernel": jnp.zeros((width, 1), jnp.float32), "bias": jnp.zeros((1,), jnp.float32)}}
    trainable, frozen = split_params(params, config.model.trainable_layers)
    if config.model.dtype == "bfloat16":
        frozen = frozen_in_bfloat16(frozen)
    reward = make_reward(config, tokenizer, loaded)
    sampling = loaded.sampling_config(config.ppo.response_len, temperature=config.ppo.temperature,
                                      min_new_tokens=config.ppo.min_response_len)
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    progress(f"policy {loaded.source}: {count(trainable):,} trainable and {count(frozen):,} frozen parameters; "
             f"reward {reward.name}")
    return NLSetup(config, model, loaded.config, tokenizer, reward, sampling, trainable, frozen, loaded)


def make_reward(config: Config, tokenizer: nl_tasks.HFTokenizer, loaded) -> LexiconReward | ClassifierReward:
    if config.reward.kind == "vader_lexicon":
        return LexiconReward.for_tokenizer(tokenizer.decode, loaded.config.vocab_size, condition=config.reward.condition)
    if config.reward.kind == "classifier":
        return classifier_reward(config.reward.model, tokenizer.decode, loaded.pad_id, config.reward.max_len,
                                 condition=config.reward.condition)
    raise ValueError(f"reward.kind {config.reward.kind!r} is not an NL reward (vader_lexicon, classifier)")


def build_all_task_data(config: Config, tokenizer: nl_tasks.TextTokenizer) -> dict[int, nl_tasks.NLTaskData]:
    """Test sets, training pools and probing sets of every task (host side; errors name the shortfall)."""
    texts = load_corpus(config.task.corpus)
    return {
        task_id: nl_tasks.build_task_data(
            task_id, texts, tokenizer, config.task.prompt_len, test_sizes=config.task.test_sizes(),
            train_size=config.task.train_size, max_s_only_rate=max(config.sweep.s_only_rates),
            probe_size=config.probe.probe_size, seed=config.run.seed,
            source=config.task.corpus,
        )
        for task_id in config.task.task_ids
    }


class NLExperiment:
    """`rlbias_jax.experiments.base.Experiment` for run.experiment = "nl"."""

    def __init__(self, config: Config):
        self.config = config
        self.task_names = {task_id: nl_tasks.TASK_NAMES[task_id] for task_id in config.task.task_ids}  # configured, in order
        self.setup: NLSetup | None = None
        self.task_data: dict[int, nl_tasks.NLTaskData] = {}

    def check_inputs(self) -> None:
        from rlbias_jax.models.loading import ModelLoadError, resolve_source
        from rlbias_jax.tasks.corpus import BUNDLED_CORPORA, IMDB_NAMES

        config = self.config
        named = [("model.source", config.model.source)]
        if config.reward.kind == "classifier":
            named.append(("reward.model", config.reward.model))
        for field, source in named:
            try:
                resolve_source(source)
            except ModelLoadError as error:
                raise ConfigError(f"{field}: {error}") from None
        corpus = config.task.corpus
        if corpus not in BUNDLED_CORPORA and corpus not in IMDB_NAMES and not Path(corpus).expanduser().is_file():
            known = ", ".join([*BUNDLED_CORPORA, *IMDB_NAMES])
            raise ConfigError(f"task.corpus: {corpus!r} is neither a known corpus ({known}) nor an existing text file")

    def prepare(self, progress: Progress) -> None:
        """Load the model, tokenizer and reward, and build every task's prompt sets."""
        started = time.perf_counter()
        config = self.config
        self.setup = load_setup(config, progress)
        self.task_data = build_all_task_data(config, self.setup.tokenizer)
        sizes = next(iter(self.task_data.values()))
        progress(
            f"corpus {config.task.corpus!r}: {len(config.task.task_ids)} tasks, prompts of {config.task.prompt_len} tokens "
            f"(test {', '.join(f'{p} {len(s)}' for p, s in sizes.test.items())}); loaded in {time.perf_counter() - started:.1f} s"
        )

    # PROBING: the pretrained policy LM is the probe

    @property
    def probe_mode(self) -> str:
        return "frozen" if self.config.probe.mode == "frozen" else "finetune"

    def probe_model(self) -> ProbeModel:
        loaded, probe = self.setup.loaded, self.config.probe
        if self.probe_mode == "frozen":
            return frozen_probe(loaded.config.d_model, kind=probe.frozen_head, hidden=probe.frozen_mlp_width)
        return pretrained_probe(loaded.module, loaded.params, self.config.task.prompt_len)

    def probe_task(self, key: jax.Array, task_id: int) -> ProbeTask:
        order_key, init_key, train_key = jax.random.split(jax.random.fold_in(key, task_id), 3)
        sets = [self.task_data[task_id].probing_set(probe_name, self.config.probe.probe_size) for probe_name in PROBES]
        tokens, labels = jnp.asarray(np.stack([s[0] for s in sets])), jnp.asarray(np.stack([s[1] for s in sets]))
        features_fn = None
        if self.probe_mode == "frozen":
            loaded = self.setup.loaded
            lm_apply = lambda params, tokens, **kw: loaded.module.apply({"params": params}, tokens, **kw)  # noqa: E731
            features = [layer_features(lm_apply, loaded.params, tokens[p], batch_size=self.config.probe.eval_batch_size)
                        for p in range(len(PROBES))]

            def features_fn(seed, set_tokens):
                # the pretrained model is the same for every probe seed: features are computed once per set
                del seed
                return features[0] if bool(jnp.array_equal(set_tokens, tokens[0])) else features[1]

        return ProbeTask(task_id=task_id, task_name=self.task_names[task_id], tokens=tokens, labels=labels,
                         keys={"order": order_key, "init": init_key, "train": train_key}, features_fn=features_fn)

    # THE SWEEP

    def initial_states(self, specs: list[RunSpec]) -> RunState:
        """Every run starts from the same pretrained weights."""
        base = jax.random.key(self.config.run.seed)
        keys = jnp.stack([stream(base, KeyTag.ROLLOUT, spec.task_id, spec.rate_index, spec.seed) for spec in specs])
        optimizer = make_optimizer(self.config.ppo)
        return jax.vmap(lambda key: init_run_state(self.setup.initial_trainable, optimizer, key, self.config.ppo.kl_coef))(keys)

    def training_data(self, specs: list[RunSpec]) -> RunData:
        sets = [self.task_data[spec.task_id].training_set(spec.s_only_rate, self.config.task.train_size, spec.seed)
                for spec in specs]
        return RunData(prompts=jnp.asarray(np.stack([s[0] for s in sets])), labels=jnp.asarray(np.stack([s[1] for s in sets])))

    def shared(self, specs: list[RunSpec]) -> Shared:
        return Shared(value=self.setup.shared(), per_run=False)

    def build_policy(self, shared: SharedParams) -> tuple[Policy, object]:
        return self.setup.build_policy(shared), shared.reference

    def test_prompts(self, task_id: int, partition: str) -> np.ndarray:
        return self.task_data[task_id].test[partition].tokens

    def score(self, raw_reward: float) -> float:
        return float(normalised_score(raw_reward))

    def sweep_description(self, specs: list[RunSpec]) -> str:
        config = self.config
        return (
            f"RL sweep: {len(specs)} runs ({len(config.task.task_ids)} tasks × {len(config.sweep.s_only_rates)} rates × "
            f"{config.sweep.seeds} seeds) as one program on {{devices}} device(s); the frozen weights and the reference are shared"
        )

    def chunk_note(self, rows: list[dict], iteration: int) -> str:
        """'  KL 0.123  beta 0.200': the last iteration's mean KL and coefficient over runs."""
        last = [row for row in rows if row["iteration"] == iteration - 1]
        if not last:
            return ""
        kl = sum(row["objective/kl"] for row in last) / len(last)
        beta = sum(row["objective/kl_coef"] for row in last) / len(last)
        return f"  KL {kl:.3f}  beta {beta:.3f}"
