"""The README's benchmark tables come from the benchmark JSON and nothing else."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_benchmark_table.py"
spec = importlib.util.spec_from_file_location("make_benchmark_table", SCRIPT)
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)

MACHINE = {"processor": "Test CPU", "cpu_count": 2, "cpu_flags": ["avx2"], "devices": ["cpu:cpu"], "date": "2030-01-01",
           "packages": {"jax": "9.9"}, "git_sha": "abcdef1234567", "load_average_at_start": [1.0, 1.0, 1.0]}


def _trl_json() -> dict:
    return {
        "machine": MACHINE,
        "differences": ["TRL trains a separate value network"],
        "settings": [{
            "setting": {"name": "paper_4x256", "episodes": 256, "minibatch": 64, "epochs": 5},
            "model": {"n_layer": 4, "d_model": 256, "parameters": 3_160_000, "prompt_len": 10, "response_len": 5},
            "ours": {"episodes_per_s": 123.4, "flops_per_s": 2.0e11},
            "trl": {"episodes_per_s": 45.6, "flops_per_s": 1.4e11, "versions": {"trl": "1.12.0"}},
            "speedup": 2.706, "speedup_per_cpu_s": 2.5, "load_average": {"before": [0.5, 0, 0], "after": [0.7, 0, 0]},
        }],
    }


def test_tables_show_the_json_numbers_and_keep_the_rest_of_the_readme(tmp_path):
    (tmp_path / "ppo_vs_trl.json").write_text(json.dumps(_trl_json()))
    block = table.generate(tmp_path)
    assert "123.4" in block and "45.6" in block and "2.71×" in block and "1.12.0" in block
    readme = "# Title\n\n## Benchmarks\n\nIntro text.\n\n## Next\n\nkept\n"
    updated = table.replace_block(readme, block)
    assert updated.startswith("# Title\n\n## Benchmarks\n\nIntro text.")
    assert updated.index(table.START) < updated.index("## Next") and updated.endswith("## Next\n\nkept\n")
    # idempotent, and a changed number replaces the old block instead of adding a second one
    assert table.replace_block(updated, block) == updated
    data = _trl_json()
    data["settings"][0]["ours"]["episodes_per_s"] = 99.9
    (tmp_path / "ppo_vs_trl.json").write_text(json.dumps(data))
    again = table.replace_block(updated, table.generate(tmp_path))
    assert "99.9" in again and "123.4" not in again and again.count(table.START) == 1


def test_no_results_says_so(tmp_path):
    assert "No benchmark results yet" in table.generate(tmp_path)


def _nl_entry(episodes_per_s: float) -> dict:
    phase = lambda ms: {"median_seconds": ms / 1e3}  # noqa: E731
    return {"rollout": phase(500), "teacher_forced": phase(400), "update": phase(3000),
            "iteration": phase(2 * 24 / episodes_per_s * 1e3), "episodes_per_s": episodes_per_s}


def test_nl_throughput_table_shows_each_variant_and_the_ratio_to_before(tmp_path):
    data = {"machine": MACHINE, "config": "configs/nl_default.toml", "rounds": 3, "iterations_per_call": 2,
            "shapes": {"episodes_per_iteration": 24, "prompt_len": 12, "response_len": 8, "trainable_layers": 2,
                       "epochs": 4, "minibatch_size": 8},
            "notes": {"before": "the old path", "bf16": "the new path"},
            "variants": {"before": _nl_entry(2.0), "bf16": _nl_entry(9.0)},
            "load_average_per_round": [[5.5, 5, 5], [6.3, 6, 6]]}
    (tmp_path / "nl_throughput.json").write_text(json.dumps(data))
    block = table.generate(tmp_path)
    assert "| before: the old path | 500 | 400 | 3,000 | 12,000 | 2.00 | 1.00× |" in block
    assert "| bf16: the new path | 500 | 400 | 3,000 | 2,667 | 9.00 | 4.50× |" in block
    assert "5.5, 6.3" in block
