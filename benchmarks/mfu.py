"""Achieved FLOP/s of each PPO phase against the machine's measured matmul peak (MFU).

Peak: a jitted square GEMM (several sizes; the fastest counts), in float32 and bfloat16.
Phases of one PPO iteration, each jitted on its own and timed after warm-up:
  rollout          KV-cache sampling of the responses (prefill + one step per token)
  teacher_forced   the forward pass that recomputes old log-probs and values
  update           epochs × minibatches of forward + backward + Adam (`ppo.ppo_update`)
  iteration        the whole iteration through the real sweep program (`make_train_chunk`, R = 1)
  iteration_bitwise  the same with `run.bitwise_across_devices = true` (YNNPACK fusions off)
FLOPs are counted analytically (`common.ppo_flops_per_episode`: 2N per token forward,
6N with backward, plus attention). All timings are interleaved round by round, so
that other users' load hits every phase and the peak alike; MFU uses the best round
of each, medians are reported too. On a shared machine wall time also counts the time
other processes hold the cores, so MFU per CPU-second is reported as well: FLOPs per
CPU-second of this process (all threads) in the phase over the same for the GEMM.

    python3 benchmarks/mfu.py                               # CPU: the toy settings, fp32 and bf16
    python3 benchmarks/mfu.py --model gpt2-small --dtypes bfloat16 --name mfu_gpu   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PAPER, SMALL, Setting, load_average, machine, median, ppo_flops_per_episode, timed_call, toy_config, write_json  # noqa: E402

from rlbias_jax.models.gpt2 import GPT2, GPT2Config  # noqa: E402
from rlbias_jax.models.heads import PolicyValueModel  # noqa: E402
from rlbias_jax.models.sampling import SamplingConfig  # noqa: E402
from rlbias_jax.experiments.base import run_specs  # noqa: E402
from rlbias_jax.experiments.toy import ToyExperiment  # noqa: E402
from rlbias_jax.rl import ppo, sweep, train  # noqa: E402

# GPT-2 small (124M) on synthetic prompts, for the GPU check: 64-token prompts, 64-token responses.
GPT2_SMALL = Setting("gpt2_small", n_layer=12, d_model=768, n_head=12, episodes=256, minibatch=32, epochs=1)
GPT2_SMALL_VOCAB = 50257
GPT2_SMALL_LENGTHS = (64, 64)


def gemm_fn(size: int, dtype) -> tuple[callable, float]:
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    # float32 accumulation and output, as the model's bf16 matmuls (bf16 -> bf16 GEMMs are slower on XLA:CPU)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()

    def best_of_three() -> tuple[float, float]:
        # a short burst: the peak is what the machine gives when no one else takes it
        calls = [timed_call(lambda: matmul(a, b).block_until_ready()) for _ in range(3)]
        return min(wall for wall, _ in calls), min(cpu for _, cpu in calls)

    return best_of_three, 2.0 * size**3


def gemm_sizes() -> list[int]:
    return [1024, 2048] if jax.default_backend() == "cpu" else [4096, 8192]


def toy_pieces(setting: Setting):
    config = toy_config(setting)
    experiment = ToyExperiment(config)
    specs = run_specs(config, experiment.task_names)
    states, data = experiment.initial_states(specs), experiment.training_data(specs)
    prompts = data.prompts[0, : setting.episodes]
    return config.ppo, experiment.model_config, experiment.policy, states, data, experiment.shared(specs).value, prompts


def gpt2_small_pieces(setting: Setting):
    prompt_len, response_len = GPT2_SMALL_LENGTHS
    model_config = GPT2Config(vocab_size=GPT2_SMALL_VOCAB, n_layer=setting.n_layer, n_head=setting.n_head,
                              d_model=setting.d_model, max_len=prompt_len + response_len, dtype=setting.dtype)
    model = PolicyValueModel(GPT2(model_config))

    def apply_fn(params, tokens, positions, mask, cache):
        return model.apply({"params": params}, tokens, positions=positions, attention_mask=mask, cache=cache)

    def score_fn(responses, masks, labels, prompts):
        return (responses % 2 == labels[:, None]).mean(axis=1).astype(jnp.float32)

    from rlbias_jax.config import PPOConfig

    ppo_config = PPOConfig(episodes_per_iteration=setting.episodes, minibatch_size=setting.minibatch, epochs=setting.epochs,
                           response_len=response_len, learning_rate=setting.learning_rate)
    policy = train.Policy(apply_fn=apply_fn, init_cache=model_config.init_cache, score_fn=score_fn,
                          sampling=SamplingConfig(max_new_tokens=response_len), optimizer=ppo.make_optimizer(ppo_config))
    params = model.init(jax.random.key(0), jnp.zeros((1, prompt_len), jnp.int32))["params"]
    states = jax.tree.map(lambda x: x[None], train.init_run_state(params, policy.optimizer, jax.random.key(1), 0.0))
    prompts = jax.random.randint(jax.random.key(2), (setting.episodes, prompt_len), 0, GPT2_SMALL_VOCAB)
    data = train.RunData(prompts=prompts[None], labels=jnp.zeros((1, setting.episodes), jnp.int32))
    return ppo_config, model_config, policy, states, data, None, prompts


def phase_fns(setting: Setting, model_name: str) -> tuple[dict, dict, dict]:
    """{phase: blocking fn}, {phase: FLOPs per call}, model description."""
    pieces = gpt2_small_pieces if model_name == "gpt2-small" else toy_pieces
    ppo_config, model_config, policy, states, data, reference, prompts = pieces(setting)
    params = jax.tree.map(lambda x: x[0], states.train.params)
    train_state = jax.tree.map(lambda x: x[0], states.train)
    episodes, prompt_len = prompts.shape
    response_len = ppo_config.response_len

    rollout = jax.jit(lambda p, x, k: train.rollout(policy, p, x, k))
    teacher = jax.jit(lambda p, t: ppo.response_statistics(policy.apply_fn, p, t, response_len, ppo_config.temperature))
    update = jax.jit(lambda s, e, k: ppo.ppo_update(s, e, k, policy.apply_fn, policy.optimizer, ppo_config))
    chunk = sweep.make_train_chunk(lambda reference: (policy, reference), ppo_config, shared_axis=None)
    chunk_bitwise = sweep.make_train_chunk(lambda reference: (policy, reference), ppo_config, shared_axis=None,
                                           bitwise_across_devices=True)

    tokens, _, mask = rollout(params, prompts, jax.random.key(3))
    logprobs, values, _ = teacher(params, tokens)
    advantages = jax.random.normal(jax.random.key(4), logprobs.shape)
    episodes_batch = ppo.Episodes(tokens=tokens, response_mask=mask, logprobs=logprobs, values=values,
                                  advantages=advantages, returns=values + advantages)

    def run_chunk(program):
        # the chunk donates its state: hand it a copy every call
        out, _ = program(jax.tree.map(lambda x: x.copy(), states), data, reference, length=1)
        jax.block_until_ready(out)

    fns = {
        "rollout": lambda: jax.block_until_ready(rollout(params, prompts, jax.random.key(5))),
        "teacher_forced": lambda: jax.block_until_ready(teacher(params, tokens)),
        "update": lambda: jax.block_until_ready(update(train_state, episodes_batch, jax.random.key(6))),
        "iteration": lambda: run_chunk(chunk),
        "iteration_bitwise": lambda: run_chunk(chunk_bitwise),
    }
    for fn in fns.values():  # compile
        fn()
    per_episode = ppo_flops_per_episode(model_config.num_params(), model_config.n_layer, model_config.d_model,
                                        prompt_len, response_len, ppo_config.epochs)
    flops = {
        "rollout": per_episode["rollout"] * episodes,
        "teacher_forced": per_episode["teacher_forced"] * episodes,
        "update": per_episode["update"] * episodes,
        "iteration": per_episode["total"] * episodes,
        "iteration_bitwise": per_episode["total"] * episodes,
    }
    description = {
        "n_layer": model_config.n_layer, "d_model": model_config.d_model, "n_head": model_config.n_head,
        "vocab_size": model_config.vocab_size, "parameters": model_config.num_params(), "dtype": model_config.dtype,
        "prompt_len": prompt_len, "response_len": response_len, "episodes": episodes,
        "minibatch": ppo_config.minibatch_size, "epochs": ppo_config.epochs,
        "flops_per_episode": per_episode,
    }
    return fns, flops, description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["toy", "gpt2-small"], default="toy")
    parser.add_argument("--settings", default="paper_4x256,small_2x128", help="toy settings (common.py)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="mfu")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per iteration (gpt2-small; a wiring check on CPU)")
    parser.add_argument("--minibatch", type=int, default=None)
    args = parser.parse_args()

    dtypes = args.dtypes.split(",")
    gpt2_small = dataclasses.replace(GPT2_SMALL, episodes=args.episodes or GPT2_SMALL.episodes,
                                     minibatch=args.minibatch or GPT2_SMALL.minibatch)
    base_settings = [gpt2_small] if args.model == "gpt2-small" else [{"paper_4x256": PAPER, "small_2x128": SMALL}[name] for name in args.settings.split(",")]
    result = {"benchmark": "mfu", "machine": machine(), "backend": jax.default_backend(), "rounds": args.rounds,
              "peak": {}, "settings": []}

    peaks = {}
    for dtype in dtypes:
        for size in gemm_sizes():
            peaks[f"gemm_{dtype}_{size}"] = gemm_fn(size, jnp.dtype(dtype))

    for base in base_settings:
        for dtype in dtypes:
            setting = dataclasses.replace(base, dtype=dtype)
            print(f"{setting.name} {dtype}: compiling ...", flush=True)
            fns, flops, description = phase_fns(setting, args.model)
            gemms = {name: fn for name, (fn, _) in peaks.items() if name.startswith(f"gemm_{dtype}_")}
            times = {name: [] for name in [*gemms, *fns]}
            cpu_times = {name: [] for name in [*gemms, *fns]}
            for _ in range(args.rounds):  # round-robin, so that other users' load hits all alike
                for name, burst in gemms.items():
                    wall, cpu = burst()
                    times[name].append(wall)
                    cpu_times[name].append(cpu)
                for name, fn in fns.items():
                    wall, cpu = timed_call(fn)
                    times[name].append(wall)
                    cpu_times[name].append(cpu)
            for name, (_, gemm_flops) in peaks.items():
                if name in times:
                    peak = result["peak"].setdefault(name, {"flops_per_call": gemm_flops, "seconds": [], "cpu_seconds": []})
                    peak["seconds"].extend(times[name])
                    peak["cpu_seconds"].extend(cpu_times[name])
            phases = {name: {"flops": flops[name], "seconds": times[name], "cpu_seconds": cpu_times[name]} for name in fns}
            result["settings"].append({"name": setting.name, "model": description, "dtype": dtype, "phases": phases,
                                       "load_average": load_average()})

    for name, peak in result["peak"].items():
        peak["best_flops_per_s"] = peak["flops_per_call"] / min(peak["seconds"])
        peak["best_flops_per_cpu_s"] = peak["flops_per_call"] / min(peak["cpu_seconds"])

    def best_peak(dtype: str, key: str) -> float | None:
        return max((p[key] for n, p in result["peak"].items() if n.startswith(f"gemm_{dtype}_")), default=None)

    result["peak_flops_per_s"] = {dtype: best_peak(dtype, "best_flops_per_s") for dtype in dtypes}
    # per CPU-second of this process (all its threads): robust to other users taking cores away
    result["peak_flops_per_cpu_s"] = {dtype: best_peak(dtype, "best_flops_per_cpu_s") for dtype in dtypes}
    for entry in result["settings"]:
        # MFU against the best GEMM rate of the same dtype seen anywhere in this run
        peak_flops = result["peak_flops_per_s"][entry["dtype"]]
        peak_cpu = result["peak_flops_per_cpu_s"][entry["dtype"]]
        entry["peak_flops_per_s"] = peak_flops
        entry["peak_flops_per_cpu_s"] = peak_cpu
        print(f"{entry['name']} {entry['dtype']}: peak {peak_flops / 1e9:.1f} GFLOP/s")
        for name, phase in entry["phases"].items():
            best, typical = min(phase["seconds"]), median(phase["seconds"])
            phase.update({
                "best_seconds": best, "median_seconds": typical, "flops_per_s": phase["flops"] / best,
                "mfu": phase["flops"] / best / peak_flops, "median_mfu": phase["flops"] / typical / peak_flops,
                "cpu_mfu": phase["flops"] / median(phase["cpu_seconds"]) / peak_cpu,
            })
            if name.startswith("iteration"):
                phase["episodes_per_s"] = entry["model"]["episodes"] / best
            print(f"  {name:15s} {best * 1e3:9.1f} ms (median {typical * 1e3:9.1f})  "
                  f"{phase['flops_per_s'] / 1e9:8.1f} GFLOP/s  MFU {phase['mfu']:6.1%} (median {phase['median_mfu']:6.1%}, "
                  f"per CPU-second {phase['cpu_mfu']:6.1%})")
    result["load_average_at_end"] = load_average()
    print(f"-> {write_json(args.name, result)}")


if __name__ == "__main__":
    main()
