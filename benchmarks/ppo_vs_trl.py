"""Our PPO vs TRL's PPOTrainer, side by side on the same machine in one run.

Same policy (GPT-2, randomly initialised), prompts (the toy task's training set),
reward (ordered digits), batch, response length, PPO epochs, minibatches, learning
rate and KL 0 on both sides. Ours runs in-process through the real sweep program
(`rl.sweep.make_train_chunk` → `rl.train.ppo_iteration`) with one run; TRL runs in
its own virtual environment (`benchmarks/setup_trl_venv.sh`, torch CPU +
trl==1.12.0) as a subprocess (`benchmarks/trl_side.py`). Timings exclude compilation
and warm-up updates; the order is ours → TRL → ours, and our time is the median over
both blocks, so that slow drifts of other users' load affect both sides alike. Each side
also reports CPU seconds per update (its process, all threads), which other users' load
distorts far less than wall time. TRL's torch gets whichever thread count (1 or all
cores) ran a policy + value forward/backward faster just before training (on a shared
machine torch's OpenMP workers can be several times slower with 2 threads than 1).

Part 2, the toy evidence sweep: ours trains all R runs as one vmapped program; TRL
can only train them run after run, so its sweep time is R × (trainer setup + I
updates), from one run's measured setup time and update time (declared as a
projection in the JSON). Ours is measured on all R runs at once for a few
iterations and projected to I iterations the same way.

    python3 benchmarks/ppo_vs_trl.py [--settings paper_4x256,small_2x128] [--dtypes float32,bfloat16] [--sweep-config configs/toy_default.toml]

`--dtypes`: each setting runs once per precision, side by side in the same run. float32:
both sides in float32. bfloat16: ours with `model.dtype = "bfloat16"` (bf16 operands, float32
accumulation, float32 master weights and optimizer state) in the program `rlbias run`
executes; TRL with its bf16 autocast on (TRL's default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PAPER, REPO, SMALL, Setting, load_average, machine, median, ppo_flops_per_episode, timed_call, toy_config,
    trl_flops_per_episode, write_json,
)

from rlbias_jax.config import Config, load_config, replace  # noqa: E402
from rlbias_jax.experiments.base import run_specs  # noqa: E402
from rlbias_jax.experiments.toy import ToyExperiment  # noqa: E402
from rlbias_jax.rl import sweep  # noqa: E402

VENV = REPO / ".venv-trl"

DIFFERENCES = [
    "value function: ours is a scalar head on the policy's trunk (SPEC §4); TRL trains a separate GPT-2 of the same "
    "size with a scalar head (GPT2ForSequenceClassification), so its update does about twice our FLOPs",
    "reward: TRL needs a reward model; ours is a jittable function. TRL gets `trl_side.OrderedDigitsReward`, a torch "
    "module with TRL's reward-model interface computing the same ordered-digits reward by rule (label looked up from "
    "the prompt in the training set)",
    "reference model: with KL 0 we skip the reference pass; TRL always runs a reference forward pass",
    "rollout: TRL's HF generate keeps sampling logits and runs a separate value forward pass; we sample with our "
    "KV-cache sampler and recompute log-probs and values in one teacher-forced pass (SPEC §4)",
    "gradient-norm clipping 0.5: ours applies it; TRL's PPO loop never clips (it calls optimizer.step() directly)",
    "value clipping: ours off; TRL always clips (cliprange_value set to 1e6 to switch it off)",
    "optimizer: both Adam, lr 1e-4 constant, eps 1e-5 (TRL: AdamW with weight decay 0, schedule 'constant')",
    "TRL settings that would make it slower and are switched off: gradient checkpointing (TRL default on), bf16 "
    "autocast (TRL default on) in the float32 entries, sample generations; rollout in one batch (local_rollout_forward_batch_size = batch)",
    "prompt sampling: ours draws prompts with replacement, TRL shuffles the dataset per epoch (same count)",
    "precision: each entry's setting.dtype, the same on both sides: float32, or bfloat16 (ours: bf16 operands with "
    "float32 accumulation and float32 master weights; TRL: its bf16 autocast)",
]


def ensure_trl_venv() -> Path:
    subprocess.run(["bash", str(REPO / "benchmarks" / "setup_trl_venv.sh"), str(VENV)], check=True)
    return VENV / "bin" / "python"


def our_side(config: Config, runs: int, iterations_per_call: int, calls: int):
    """Compile and run one chunk; returns (model config, data, seconds of that first call,
    a function timing `calls` further chunk calls -> seconds per iteration each)."""
    experiment = ToyExperiment(config)
    model_config = experiment.model_config
    specs = run_specs(config, experiment.task_names)
    assert len(specs) == runs, (len(specs), runs)
    states, data, shared = experiment.initial_states(specs), experiment.training_data(specs), experiment.shared(specs)
    reference = shared.value
    train_chunk = sweep.make_train_chunk(experiment.build_policy, config.ppo, shared.axis)
    holder = {"states": states}

    cpu_per_iteration: list[float] = []

    def call() -> float:
        def chunk():
            holder["states"], _ = train_chunk(holder["states"], data, reference, length=iterations_per_call)
            jax.block_until_ready(holder["states"])

        wall, cpu = timed_call(chunk)
        cpu_per_iteration.append(cpu / iterations_per_call)
        return wall

    first_call = call()
    cpu_per_iteration.clear()

    def timed_block() -> list[float]:
        return [call() / iterations_per_call for _ in range(calls)]

    timed_block.cpu_seconds = cpu_per_iteration  # CPU seconds per iteration of every timed call

    return model_config, data, first_call, timed_block


def trl_settings(config: Config, data, updates: int, warmup: int, output_dir: str) -> dict:
    ppo = config.ppo
    return {
        "model": {"n_layer": config.model.n_layer, "d_model": config.model.d_model, "n_head": config.model.n_head,
                  "max_len": config.model.max_len},
        "num_symbols": config.task.vocab_size,
        "seed": config.run.seed,
        "ppo": {"episodes_per_iteration": ppo.episodes_per_iteration, "minibatch_size": ppo.minibatch_size,
                "epochs": ppo.epochs, "learning_rate": ppo.learning_rate, "adam_eps": ppo.adam_eps,
                "response_len": ppo.response_len, "temperature": ppo.temperature, "kl_coef": ppo.kl_coef,
                "clip_eps": ppo.clip_eps, "value_coef": ppo.value_coef, "value_clip_eps": ppo.value_clip_eps,
                "gamma": ppo.gamma, "gae_lambda": ppo.gae_lambda},
        "prompts": np.asarray(data.prompts[0]).tolist(),
        "labels": np.asarray(data.labels[0]).tolist(),
        "updates": updates,
        "warmup_updates": warmup,
        "output_dir": output_dir,
        "bf16": config.model.dtype == "bfloat16",
    }


def run_trl(python: Path, settings: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        settings = dict(settings, output_dir=tmp)
        path = Path(tmp) / "settings.json"
        path.write_text(json.dumps(settings))
        completed = subprocess.run([str(python), str(REPO / "benchmarks" / "trl_side.py"), str(path)],
                                   capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"TRL side failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def compare_setting(python: Path, setting: Setting, args) -> dict:
    config = toy_config(setting)
    print(f"[{setting.name} {setting.dtype}] ours: compiling ...", flush=True)
    model_config, data, first_call, timed_block = our_side(config, 1, args.iterations_per_call, args.calls)
    load_before = load_average()
    ours = timed_block()
    print(f"[{setting.name}] TRL ...", flush=True)
    trl = run_trl(python, trl_settings(config, data, args.trl_updates + args.trl_warmup, args.trl_warmup, ""))
    ours += timed_block()
    load_after = load_average()
    compile_seconds = first_call - args.iterations_per_call * median(ours)
    episodes = setting.episodes
    prompt_len, response_len = config.task.seq_len, config.ppo.response_len
    n_params = model_config.num_params()
    our_flops = ppo_flops_per_episode(n_params, setting.n_layer, setting.d_model, prompt_len, response_len, setting.epochs)
    trl_flops = trl_flops_per_episode(n_params, setting.n_layer, setting.d_model, prompt_len, response_len, setting.epochs)
    ours_eps = episodes / median(ours)
    trl_eps = episodes / median(trl["update_seconds"])
    result = {
        "setting": setting.__dict__,
        "model": {"n_layer": setting.n_layer, "d_model": setting.d_model, "n_head": setting.n_head,
                  "vocab_size": model_config.vocab_size, "parameters": n_params, "prompt_len": prompt_len,
                  "response_len": response_len},
        "ours": {"seconds_per_iteration": ours, "cpu_seconds_per_iteration": list(timed_block.cpu_seconds),
                 "episodes_per_cpu_s": episodes / median(timed_block.cpu_seconds),
                 "compile_seconds": compile_seconds, "episodes_per_s": ours_eps,
                 "episodes_per_s_best": episodes / min(ours), "flops_per_episode": our_flops["total"],
                 "flops_per_s": our_flops["total"] * ours_eps},
        "trl": {**trl, "flops_per_episode": trl_flops["total"], "flops_per_s": trl_flops["total"] * trl_eps,
                "episodes_per_s": trl_eps, "episodes_per_cpu_s": episodes / median(trl["update_cpu_seconds"])},
        "speedup": ours_eps / trl_eps,
        "speedup_per_cpu_s": (episodes / median(timed_block.cpu_seconds)) / (episodes / median(trl["update_cpu_seconds"])),
        "speedup_best": (episodes / min(ours)) / (episodes / min(trl["update_seconds"])),
        "load_average": {"before": load_before, "after": load_after},
    }
    print(f"[{setting.name}] ours {ours_eps:8.1f} episodes/s   TRL {trl_eps:8.1f} episodes/s   ratio {result['speedup']:.2f}x"
          f" (per CPU-second {result['speedup_per_cpu_s']:.2f}x, TRL torch threads {trl['torch_threads']})"
          f"   (load {load_before} -> {load_after})", flush=True)
    return result


def compare_sweep(python: Path, args) -> dict:
    """The toy evidence sweep: ours vmapped over all R runs vs TRL run after run (projected)."""
    config = load_config(REPO / args.sweep_config)
    runs = len(config.task.task_ids) * len(config.sweep.s_only_rates) * config.sweep.seeds
    iterations = config.ppo.iterations
    print(f"[sweep] ours: {runs} runs vmapped, compiling ...", flush=True)
    _, data, first_call, timed_block = our_side(config, runs, args.iterations_per_call, 1)
    ours = timed_block()
    one_run = replace(config, task={"task_ids": (config.task.task_ids[0],)}, sweep={"s_only_rates": (0.0,), "seeds": 1})
    one_data = ToyExperiment(one_run).training_data(run_specs(one_run, ToyExperiment(one_run).task_names))
    print("[sweep] TRL: one run ...", flush=True)
    trl = run_trl(python, trl_settings(one_run, one_data, args.trl_updates + args.trl_warmup, args.trl_warmup, ""))
    ours += timed_block()
    ours_iteration = median(ours)
    compile_seconds = first_call - args.iterations_per_call * ours_iteration
    trl_update = median(trl["update_seconds"])
    # both sides at their steady rate; TRL's per-run setup and our one compilation are counted
    ours_total = compile_seconds + iterations * ours_iteration
    trl_total = runs * (trl["setup_seconds"] + iterations * trl_update)
    episodes = runs * iterations * config.ppo.episodes_per_iteration
    result = {
        "config": args.sweep_config,
        "runs": runs,
        "iterations": iterations,
        "episodes_per_iteration": config.ppo.episodes_per_iteration,
        "model": {"n_layer": config.model.n_layer, "d_model": config.model.d_model, "n_head": config.model.n_head},
        "ours": {"seconds_per_iteration_all_runs": ours, "compile_seconds": compile_seconds,
                 "projected_seconds": ours_total, "episodes_per_s": episodes / ours_total},
        "trl": {**trl, "projected_seconds": trl_total, "episodes_per_s": episodes / trl_total,
                "projection": "runs x (setup_seconds + iterations x median update seconds of one run)"},
        "speedup": trl_total / ours_total,
        "load_average": load_average(),
    }
    print(f"[sweep] {runs} runs x {iterations} iterations: ours {ours_total / 60:.1f} min, TRL {trl_total / 60:.1f} min"
          f" (projected), ratio {result['speedup']:.1f}x", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="paper_4x256,small_2x128")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16 (both sides alike)")
    parser.add_argument("--sweep-config", default="configs/toy_default.toml")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--iterations-per-call", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2, help="timed chunk calls per block (two blocks: before and after TRL)")
    parser.add_argument("--trl-updates", type=int, default=3, help="timed TRL updates")
    parser.add_argument("--trl-warmup", type=int, default=1)
    parser.add_argument("--name", default="ppo_vs_trl")
    args = parser.parse_args()

    python = ensure_trl_venv()
    settings = {"paper_4x256": PAPER, "small_2x128": SMALL}
    result = {"benchmark": "ppo_vs_trl", "machine": machine(), "differences": DIFFERENCES, "settings": []}
    for name in args.settings.split(","):
        for dtype in args.dtypes.split(","):
            result["settings"].append(compare_setting(python, dataclasses.replace(settings[name], dtype=dtype), args))
    if not args.no_sweep:
        result["sweep"] = compare_sweep(python, args)
    result["load_average_at_end"] = load_average()
    print(f"-> {write_json(args.name, result)}")


if __name__ == "__main__":
    main()
