"""The toy experiment of Cruz et al. (SPEC §3–§4): a randomly initialised GPT-2 learns to
answer an ascending or descending digit sequence depending on the target feature.

Token layout: symbols 0..V-1, EOS/PAD = V, UNK = V+1 (vocabulary V + 2).
Keys: a run's parameters depend only on its seed index (the same initialisation
for every task and rate); its training set on (task, seed) (so the sets of
different rates are drawn from the same pools); its rollout stream on
(task, rate, seed); test sets on the task alone. Probing: `fold_in(key, task_id)`
per task, then one key each for the probing sets, the block orders, the probe
initialisations, the probe training and (frozen mode) the probed model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rlbias_jax.config import Config, ConfigError, reference_needed
from rlbias_jax.experiments.base import KeyTag, Progress, RunSpec, Shared, stream
from rlbias_jax.models.gpt2 import GPT2, GPT2Config
from rlbias_jax.models.heads import PolicyValueModel
from rlbias_jax.models.sampling import SamplingConfig
from rlbias_jax.probing.extractability import PROBE_PARTITIONS, PROBES, ProbeTask
from rlbias_jax.probing.probes import ProbeModel, finetune_probe, frozen_probe, layer_features, policy_probe
from rlbias_jax.rl.ppo import make_optimizer
from rlbias_jax.rl.rewards import batch_reward
from rlbias_jax.rl.train import Policy, RunData, RunState, init_run_state
from rlbias_jax.tasks import toy as toy_tasks
from rlbias_jax.tasks.catalogue import configured_tasks


def toy_model_config(config: Config) -> GPT2Config:
    """The RL policy's GPT-2 (vocabulary V + 2: PAD/EOS = V, UNK = V + 1); the policy-mode probes use it too."""
    return GPT2Config(
        vocab_size=config.task.vocab_size + 2,
        n_layer=config.model.n_layer,
        n_head=config.model.n_head,
        d_model=config.model.d_model,
        max_len=config.model.max_len,
        dtype=config.model.dtype,
        param_dtype=config.model.param_dtype,
    )


def toy_policy(config: Config) -> tuple[PolicyValueModel, GPT2Config, Policy]:
    """The policy/value model, its config and the `Policy` an iteration runs."""
    model_config = toy_model_config(config)
    model = PolicyValueModel(GPT2(model_config))
    symbols = config.task.vocab_size

    def apply_fn(params, tokens, positions, mask, cache):
        return model.apply({"params": params}, tokens, positions=positions, attention_mask=mask, cache=cache)

    def score_fn(responses, masks, labels, prompts):
        return batch_reward(config.reward.kind, responses, masks, labels, symbols)

    policy = Policy(
        apply_fn=apply_fn,
        init_cache=model_config.init_cache,
        score_fn=score_fn,
        sampling=SamplingConfig(
            max_new_tokens=config.ppo.response_len,
            temperature=config.ppo.temperature,
            eos_id=symbols,
            pad_id=symbols,
        ),
        optimizer=make_optimizer(config.ppo),
    )
    return model, model_config, policy


def probing_set(key: jax.Array, task: toy_tasks.ToyTask | int, probe: str, size: int, vocab_size: int, seq_len: int):
    """The s- or t-probing set of a toy task: tokens int32[size, seq_len], labels int32[size].

    size // 2 positives (label 1) then the rest negatives; the online code shuffles.
    """
    positive, negative = PROBE_PARTITIONS[probe]
    num_positive = size // 2
    tokens = jnp.concatenate([
        toy_tasks.sample_partition(jax.random.fold_in(key, 1), task, positive, num_positive, vocab_size, seq_len),
        toy_tasks.sample_partition(jax.random.fold_in(key, 0), task, negative, size - num_positive, vocab_size, seq_len),
    ])
    labels = jnp.concatenate([jnp.ones(num_positive, jnp.int32), jnp.zeros(size - num_positive, jnp.int32)])
    return tokens, labels


@functools.lru_cache(maxsize=8)
def _random_policy_functions(model_config: GPT2Config, seq_len: int):
    """Jitted init and a stable apply for `layer_features`, shared by every task of a run."""
    lm = GPT2(model_config)
    dummy = jnp.zeros((1, seq_len), jnp.int32)
    return jax.jit(lambda key: lm.init(key, dummy)), lambda params, tokens, **kwargs: lm.apply(params, tokens, **kwargs)


class ToyExperiment:
    """`rlbias_jax.experiments.base.Experiment` for run.experiment = "toy"."""

    def __init__(self, config: Config):
        self.config = config
        # the configured tasks (task_ids, then task_pairs), checked: one-line ConfigErrors before any compute
        self.tasks = {task.task_id: task for task in configured_tasks(config.task)}
        self.task_names = {task_id: task.name for task_id, task in self.tasks.items()}
        self.model, self.model_config, self.policy = toy_policy(config)

    def check_inputs(self) -> None:
        if self.config.model.source != "random":
            raise ConfigError('model.source: the toy experiment trains a randomly initialised GPT-2; set model.source = "random"')

    def prepare(self, progress: Progress) -> None:
        del progress  # everything is generated from keys when needed

    # PROBING

    @property
    def probe_mode(self) -> str:
        return self.config.probe.mode

    def probe_model(self) -> ProbeModel:
        probe, seq_len = self.config.probe, self.config.task.seq_len
        if probe.mode == "finetune":
            return finetune_probe(
                self.config.task.vocab_size + 2, seq_len, width=probe.encoder_width, heads=probe.encoder_heads,
                ff=probe.encoder_ff, layers=probe.encoder_layers, dropout=probe.dropout, head_dropout=probe.head_dropout,
            )
        if probe.mode == "policy":
            return policy_probe(self.model_config, seq_len)
        return frozen_probe(self.config.model.d_model, kind=probe.frozen_head, hidden=probe.frozen_mlp_width)

    def probe_task(self, key: jax.Array, task_id: int) -> ProbeTask:
        task = self.config.task
        data_key, order_key, init_key, train_key, model_key = jax.random.split(jax.random.fold_in(key, task_id), 5)
        sets = [probing_set(jax.random.fold_in(data_key, p), self.tasks[task_id], probe, self.config.probe.probe_size,
                            task.vocab_size, task.seq_len) for p, probe in enumerate(PROBES)]
        features_fn = None
        if self.config.probe.mode == "frozen":
            # the randomly initialised policy (one initialisation per probe seed): what RL starts from
            init, apply = _random_policy_functions(self.model_config, task.seq_len)

            def features_fn(seed, tokens):
                return layer_features(apply, init(jax.random.fold_in(model_key, seed)), tokens)

        return ProbeTask(task_id=task_id, task_name=self.task_names[task_id], tokens=jnp.stack([s[0] for s in sets]),
                         labels=jnp.stack([s[1] for s in sets]), keys={"order": order_key, "init": init_key, "train": train_key},
                         features_fn=features_fn)

    # THE SWEEP

    def _init_params(self, key: jax.Array):
        dummy = jnp.zeros((1, self.config.task.seq_len), jnp.int32)
        return self.model.init(key, dummy)["params"]

    def _initial_params(self, specs: list[RunSpec]):
        base = jax.random.key(self.config.run.seed)
        seeds = sorted({spec.seed for spec in specs})
        params_by_seed = jax.jit(jax.vmap(self._init_params))(jnp.stack([stream(base, KeyTag.INIT, seed) for seed in seeds]))
        take = jnp.asarray([seeds.index(spec.seed) for spec in specs])
        return jax.tree.map(lambda x: x[take], params_by_seed)

    def initial_states(self, specs: list[RunSpec]) -> RunState:
        base = jax.random.key(self.config.run.seed)
        keys = jnp.stack([stream(base, KeyTag.ROLLOUT, spec.task_id, spec.rate_index, spec.seed) for spec in specs])
        return jax.vmap(lambda p, k: init_run_state(p, self.policy.optimizer, k, self.config.ppo.kl_coef))(
            self._initial_params(specs), keys)

    def training_data(self, specs: list[RunSpec]) -> RunData:
        base = jax.random.key(self.config.run.seed)
        task = self.config.task
        prompts, labels = [], []
        for task_id in self.task_names:
            task_specs = [spec for spec in specs if spec.task_id == task_id]
            keys = jnp.stack([stream(base, KeyTag.DATA, task_id, spec.seed) for spec in task_specs])
            rates = jnp.asarray([spec.s_only_rate for spec in task_specs], jnp.float32)
            build = jax.vmap(functools.partial(
                toy_tasks.make_training_set, task=self.tasks[task_id], train_size=task.train_size, vocab_size=task.vocab_size,
                seq_len=task.seq_len,
            ))
            sets = build(keys, s_only_rate=rates)
            prompts.append(sets.tokens)
            labels.append(sets.labels)
        return RunData(prompts=jnp.concatenate(prompts), labels=jnp.concatenate(labels))

    def shared(self, specs: list[RunSpec]) -> Shared:
        """The KL reference: each run's own initial parameters (None without a KL penalty)."""
        reference = self._initial_params(specs) if reference_needed(self.config) else None
        return Shared(value=reference, per_run=True)

    def build_policy(self, reference) -> tuple[Policy, object]:
        return self.policy, reference

    @functools.cached_property
    def _test_sets(self) -> dict[int, dict[str, jax.Array]]:
        base, task = jax.random.key(self.config.run.seed), self.config.task
        return {
            task_id: toy_tasks.make_test_sets(stream(base, KeyTag.TEST, task_id), self.tasks[task_id], task.test_sizes(), task.vocab_size,
                                              task.seq_len)
            for task_id in self.task_names
        }

    def test_prompts(self, task_id: int, partition: str) -> jax.Array:
        return self._test_sets[task_id][partition]

    def score(self, raw_reward: float) -> float:
        return float(raw_reward)

    def sweep_description(self, specs: list[RunSpec]) -> str:
        config = self.config
        return (
            f"RL sweep: {len(specs)} runs ({len(self.task_names)} tasks × {len(config.sweep.s_only_rates)} rates × "
            f"{config.sweep.seeds} seeds) as one program on {{devices}} device(s); "
            f"{self.model_config.num_params():,} parameters per policy"
        )

    def chunk_note(self, rows: list[dict], iteration: int) -> str:
        return ""
