"""The vectorised online code against the original block-after-block procedure.

Both sides train the same probes on the same data with the same minibatches and
dropout masks — equal training work, the same gradient steps per block — so their
codelengths agree to float rounding (reported as `max_abs_bits_difference`):

  (a) `OnlineCode`: every lane (both probes × probe seeds [× layers]) and every
      block in one compiled program, for each `vectorize` option;
  (b) `online_code_block_by_block`: lane after lane, block after block, epoch
      after epoch, minibatch after minibatch from Python, with a jitted step
      (the way the original code runs).

Times are after warm-up (compilation excluded; reported apart), the best of
`--repeats` runs taken in alternation, because the CPU is shared and its load drifts.
Data, model and schedule come from the config (default: configs/toy_default.toml,
task 2). With --schedules, it also compares the cheaper default schedule with the
original one (10 epochs of 64 per block) on MDL values and time.

    python3 benchmarks/mdl_speed.py [--config configs/toy_default.toml] [--task 2] [--modes policy frozen] [--schedules]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, best_time, machine, write_json  # noqa: E402

from rlbias_jax.config import load_config, replace  # noqa: E402
from rlbias_jax.experiments.runner import measure_extractability  # noqa: E402
from rlbias_jax.experiments.toy import ToyExperiment  # noqa: E402
from rlbias_jax.probing import extractability as ex  # noqa: E402
from rlbias_jax.probing.blocks import block_ends  # noqa: E402
from rlbias_jax.probing.online_code import OnlineCode, online_code_block_by_block  # noqa: E402


def problem(config, task_id: int):
    """inputs, labels, lanes of one task, built exactly as `measure_extractability` builds them."""
    task = ToyExperiment(config).probe_task(jax.random.key(0), task_id)
    if task.features_fn is not None:
        return ex.frozen_lanes(task.keys, task.tokens, task.labels, config.probe.seeds, task.features_fn)
    return ex.model_lanes(task.keys, task.tokens, task.labels, config.probe.seeds)


def time_mode(config, task_id: int, repeats: int, vectorize_options: list[str]) -> dict:
    inputs, labels, infos, lanes = problem(config, task_id)
    probe, schedule = ToyExperiment(config).probe_model(), ex.make_schedule(config)
    ends = block_ends(config.probe.probe_size)
    steps = schedule.steps(ends)
    result = {
        "lanes": len(infos),
        "steps_per_block": steps.tolist(),
        "gradient_steps_total": int(steps.sum() * len(infos)),
        "batch_size": schedule.batch_size,
        "vectorised": {},
    }
    codes, outputs, compile_seconds = {}, {}, {}
    for vectorize in vectorize_options:
        codes[vectorize] = OnlineCode(probe, schedule, ends, vectorize=vectorize)
        started = time.perf_counter()
        outputs[vectorize] = jax.block_until_ready(codes[vectorize](inputs, labels, lanes))
        compile_seconds[vectorize] = time.perf_counter() - started  # compilation + one run
    # the reference compiles its small functions on a one-lane warm-up
    online_code_block_by_block(probe, schedule, ends, inputs, labels, jax.tree.map(lambda x: x[:1], lanes))

    # Interleave the contestants and keep each one's best time: the CPU is shared, its load drifts.
    times = {vectorize: [] for vectorize in vectorize_options}
    times["block_by_block"] = []
    reference_output = None
    for repeat in range(repeats):
        for vectorize, code in codes.items():
            times[vectorize].append(best_time(lambda: jax.block_until_ready(code(inputs, labels, lanes)), 1))
        started = time.perf_counter()
        reference_output = online_code_block_by_block(probe, schedule, ends, inputs, labels, lanes)
        times["block_by_block"].append(time.perf_counter() - started)
        print(f"  repeat {repeat}: " + ", ".join(f"{name} {t[-1]:.2f} s" for name, t in times.items()), flush=True)
    reference_seconds = min(times["block_by_block"])
    for vectorize in vectorize_options:
        steady = min(times[vectorize])
        result["vectorised"][vectorize] = {
            "seconds": round(steady, 3),
            "all_seconds": [round(t, 3) for t in times[vectorize]],
            "compile_seconds": round(compile_seconds[vectorize] - steady, 3),
        }
    result["block_by_block_seconds"] = round(reference_seconds, 3)
    result["block_by_block_all_seconds"] = [round(t, 3) for t in times["block_by_block"]]
    best = min(result["vectorised"], key=lambda v: result["vectorised"][v]["seconds"])
    result["best_vectorize"] = best
    result["speedup"] = {v: round(reference_seconds / r["seconds"], 2) for v, r in result["vectorised"].items()}
    result["max_abs_bits_difference"] = float(max(
        np.max(np.abs(np.asarray(out.bits) - reference_output.bits)) for out in outputs.values()
    ))
    mdl = [c.mdl_bits for c in codes[best].codelengths(outputs[best])]
    result["mdl_bits_per_lane"] = [round(m, 2) for m in mdl]
    print(f"  speedup: {result['speedup']}", flush=True)
    return result


def compare_schedules(config, progress) -> dict:
    """The default (cheaper) schedule against the original 10 epochs of 64 per block, same lr and data."""
    original = replace(config, probe={"schedule": "epochs", "epochs_per_block": 10, "batch_size": 64})
    out = {}
    for name, cfg in (("default", config), ("original_10_epochs_of_64", original)):
        started = time.perf_counter()
        result = measure_extractability(ToyExperiment(cfg), jax.random.key(1), progress=progress)
        out[name] = {
            "schedule": dataclasses.asdict(ex.make_schedule(cfg)),
            "wall_seconds_all_tasks_incl_compile": round(time.perf_counter() - started, 2),
            "wall_seconds_per_task": {str(t): round(s, 2) for t, s in result.wall_time_s.items()},
            "tasks": {str(row["task_id"]): {k: row[k] for k in ("mdl_s_bits", "mdl_s_sem", "mdl_t_bits", "mdl_t_sem",
                                                                 "relative_extractability", "relative_extractability_sem")}
                      for row in result.extractability_rows},
        }
    moves = {}
    for task, cheap in out["default"]["tasks"].items():
        ref = out["original_10_epochs_of_64"]["tasks"][task]
        moves[task] = {k: round(cheap[k] / ref[k] - 1, 4) for k in ("mdl_s_bits", "mdl_t_bits", "relative_extractability")}
    out["relative_change_default_vs_original"] = moves
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy_default.toml")
    parser.add_argument("--task", type=int, default=2)
    parser.add_argument("--modes", nargs="*", default=["policy", "frozen"],
                        help="probe modes to time; none (--modes with --schedules) keeps the timings already in the JSON")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vectorize", nargs="+", default=["lanes", "none"],
                        help="OnlineCode options to time (lanes_and_blocks runs every block to the longest one's steps)")
    parser.add_argument("--schedules", action="store_true", help="also compare the default schedule with the original")
    args = parser.parse_args()

    config = load_config(args.config)
    report = {"machine": machine(), "config": args.config, "task": args.task, "probe_size": config.probe.probe_size,
              "probe_seeds": config.probe.seeds, "model": dataclasses.asdict(config.model), "modes": {}}
    for mode in args.modes:
        print(f"{mode} probes, task {args.task}:", flush=True)
        report["modes"][mode] = time_mode(replace(config, probe={"mode": mode}), args.task, args.repeats, args.vectorize)
    previous = RESULTS / "mdl_speed.json"
    if not args.modes and previous.is_file():
        kept = json.loads(previous.read_text())
        report["modes"] = kept.get("modes", {})
        report["machine_when_modes_were_timed"] = kept.get("machine_when_modes_were_timed", kept.get("machine"))
    report["speedup_best"] = {mode: r["speedup"][r["best_vectorize"]] for mode, r in report["modes"].items()}
    if args.schedules:
        print("default schedule vs the original (10 epochs of 64 per block):", flush=True)
        report["schedules"] = compare_schedules(config, lambda message: print(message, flush=True))
    path = write_json("mdl_speed", report)
    print(f"speedup (block by block / vectorised, best option): {report['speedup_best']}; written to {path}")


if __name__ == "__main__":
    main()
