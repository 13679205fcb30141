"""Tokens/s of our jitted KV-cache sampler against Hugging Face torch `generate`.

Two models, same weights on both sides, batch 16 left-padded prompts, 32 new tokens, greedy
(so both sides must also produce the same tokens, which is checked):
  - tiny: the toy policy's GPT-2 shape (2 layers, width 64, 4 heads), random weights;
    overhead-bound on a CPU, where the target is >= 2x;
  - smollm2: the bundled SmolLM2-135M-Instruct GGUF (ours: our loader; theirs: transformers'
    GGUF path), compute-bound, so we also report the achieved fraction of the measured peak
    of a large jitted float32 GEMM.
Times are the best of `--repeats` calls after one warm-up call (compile excluded), with
`block_until_ready` on our side and `torch.no_grad()` on theirs. Torch runs with the machine's
core count (what XLA uses) and with 1 thread: on a shared, oversubscribed CPU torch's OpenMP
threads can be many times slower than one thread, so the headline ratio is against the faster
of the two (`ratio_ours_over_hf_best`); `ratio_ours_over_hf_same_threads` is also reported.
The load average is recorded before and after.

    python3 benchmarks/generation.py [--batch 16] [--new-tokens 32] [--repeats 3] [--skip-smollm2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, machine, write_json  # noqa: E402

from rlbias_jax.models.loading import LoadedModel, bundled_model_path, load_pretrained  # noqa: E402
from rlbias_jax.models.sampling import SamplingConfig, generate  # noqa: E402

TINY = dict(vocab_size=64, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None)
CHAT_QUESTIONS = [
    "What is the capital of France?", "Name three colours.", "Write a haiku about rain.",
    "Explain photosynthesis in one sentence.", "What is 12 times 7?", "Give me a synonym for happy.",
    "Who wrote Hamlet?", "Translate 'good morning' into Spanish.", "What is a prime number?",
    "Describe a cat.", "Why is the sky blue?", "List two planets.", "What do bees make?",
    "How many legs does a spider have?", "Suggest a name for a dog.", "What is the boiling point of water?",
]


def matmul_peak(size: int = 2048, repeats: int = 5) -> dict:
    """FLOP/s of a jitted float32 [size x size] @ [size x size] (our achievable peak on this machine)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    seconds = best_time(lambda: matmul(a, b).block_until_ready(), repeats)
    return {"size": size, "seconds": seconds, "gflops": 2 * size**3 / seconds / 1e9}


def generation_flops(config, prompt_len: int, batch: int, new_tokens: int) -> float:
    """Useful forward FLOPs of generation: matmuls for the P + N - 1 fed tokens of each row, the output
    head for the N sampled positions, and causal attention over the true context length."""
    if hasattr(config, "n_kv_head"):  # Llama-family
        q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        per_token = 2 * config.n_layer * (config.d_model * (q + 2 * kv) + q * config.d_model + 3 * config.d_model * config.ff_dim)
    else:  # GPT-2
        d = config.d_model
        per_token = 2 * config.n_layer * (4 * d * d + 2 * d * config.ff_dim)
    fed = prompt_len + new_tokens - 1
    attention = sum(4 * config.n_layer * config.n_head * config.head_dim * (t + 1) for t in range(fed))
    return batch * (fed * per_token + attention + new_tokens * 2 * config.d_model * config.vocab_size)


def time_ours(loaded: LoadedModel, prompt: np.ndarray, mask: np.ndarray, new_tokens: int, repeats: int):
    sampling = SamplingConfig(max_new_tokens=new_tokens, greedy=True, eos_id=None, pad_id=loaded.pad_id)
    cache = loaded.config.init_cache(prompt.shape[0], prompt.shape[1] + new_tokens)
    run = jax.jit(lambda params, prompt, mask: generate(loaded.apply_fn, params, prompt, mask, jax.random.key(0),
                                                        sampling, cache).tokens)
    prompt, mask = jnp.asarray(prompt), jnp.asarray(mask)
    started = time.perf_counter()
    tokens = np.asarray(run(loaded.params, prompt, mask).block_until_ready())
    compile_seconds = time.perf_counter() - started
    seconds = best_time(lambda: run(loaded.params, prompt, mask).block_until_ready(), repeats)
    return tokens, seconds, compile_seconds


def time_theirs(model, prompt: np.ndarray, mask: np.ndarray, new_tokens: int, pad_id: int, repeats: int):
    """(tokens, {torch thread count: best seconds})."""
    import torch

    prompt_t, mask_t = torch.from_numpy(prompt).long(), torch.from_numpy(mask).long()

    def run():
        with torch.no_grad():
            return model.generate(prompt_t, attention_mask=mask_t, do_sample=False, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=pad_id)

    seconds = {}
    for threads in sorted({os.cpu_count(), 1}, reverse=True):
        torch.set_num_threads(threads)
        tokens = run()[:, prompt.shape[1]:].numpy()  # warm-up
        seconds[threads] = best_time(run, repeats)
    torch.set_num_threads(os.cpu_count())
    return tokens, seconds


def compare(name, loaded, hf_model, prompt, mask, new_tokens, repeats, peak_gflops) -> dict:
    ours_tokens, ours_seconds, compile_seconds = time_ours(loaded, prompt, mask, new_tokens, repeats)
    theirs_tokens, theirs_seconds = time_theirs(hf_model, prompt, mask, new_tokens, loaded.pad_id, repeats)
    best_seconds, same_seconds = min(theirs_seconds.values()), theirs_seconds[os.cpu_count()]
    generated = prompt.shape[0] * new_tokens
    flops = generation_flops(loaded.config, prompt.shape[1], prompt.shape[0], new_tokens)
    result = {
        "batch": prompt.shape[0], "prompt_len": prompt.shape[1], "new_tokens": new_tokens,
        "params": loaded.config.num_params(),
        "ours_tokens_per_s": generated / ours_seconds,
        "hf_torch_tokens_per_s_by_threads": {str(k): generated / v for k, v in theirs_seconds.items()},
        "ratio_ours_over_hf_best": best_seconds / ours_seconds,
        "ratio_ours_over_hf_same_threads": same_seconds / ours_seconds,
        "ours_seconds": ours_seconds, "hf_seconds_by_threads": {str(k): v for k, v in theirs_seconds.items()},
        "ours_compile_seconds": compile_seconds,
        "greedy_tokens_identical_fraction": float((ours_tokens == theirs_tokens).mean()),
        "useful_gflop": flops / 1e9,
        "ours_fraction_of_matmul_peak": flops / ours_seconds / 1e9 / peak_gflops,
        "hf_best_fraction_of_matmul_peak": flops / best_seconds / 1e9 / peak_gflops,
    }
    print(f"{name}: ours {result['ours_tokens_per_s']:.0f} tok/s, HF torch {generated / best_seconds:.0f} tok/s "
          f"(best of threads {sorted(theirs_seconds)}), ratio {result['ratio_ours_over_hf_best']:.2f}x "
          f"({result['ratio_ours_over_hf_same_threads']:.2f}x at {os.cpu_count()} torch threads), ours at "
          f"{100 * result['ours_fraction_of_matmul_peak']:.1f}% of matmul peak, "
          f"tokens identical {100 * result['greedy_tokens_identical_fraction']:.0f}%", flush=True)
    return result


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(row) for row in rows)
    prompt = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        prompt[i, width - len(row):], mask[i, width - len(row):] = row, True
    return prompt, mask


def tiny_models(workdir: Path):
    import torch
    import transformers

    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY)).eval()
    hf_model.save_pretrained(workdir / "tiny")
    return load_pretrained(str(workdir / "tiny")), hf_model


def smollm2_models():
    import torch
    import transformers

    path = bundled_model_path("smollm2")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                 dtype=torch.float32).eval()
    return load_pretrained("smollm2"), hf_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()

    import torch
    import transformers

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    peak = matmul_peak()
    print(f"jitted fp32 GEMM peak: {peak['gflops']:.1f} GFLOP/s", flush=True)
    results = {"machine": machine(), "load_average_before": os.getloadavg(), "torch_threads": [threads, 1],
               "transformers": transformers.__version__, "torch": torch.__version__, "matmul_peak": peak,
               "decoding": "greedy, no EOS stop", "models": {}}

    with tempfile.TemporaryDirectory() as workdir:
        loaded, hf_model = tiny_models(Path(workdir))
        rng = np.random.default_rng(0)
        rows = [rng.integers(1, TINY["vocab_size"], rng.integers(4, 9)).tolist() for _ in range(args.batch)]
        prompt, mask = left_padded(rows, 0)
        results["models"]["tiny_gpt2"] = {"config": TINY, **compare(
            "tiny GPT-2", loaded, hf_model, prompt, mask, args.new_tokens, max(args.repeats, 5), peak["gflops"])}

    if not args.skip_smollm2:
        loaded, hf_model = smollm2_models()
        questions = (CHAT_QUESTIONS * (args.batch // len(CHAT_QUESTIONS) + 1))[: args.batch]
        rows = [loaded.tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
                for q in questions]
        rows = [row if isinstance(row, list) else row["input_ids"] for row in rows]
        prompt, mask = left_padded(rows, loaded.pad_id)
        results["models"]["smollm2_135m"] = {"source": loaded.source, **compare(
            "SmolLM2-135M", loaded, hf_model, prompt, mask, args.new_tokens, args.repeats, peak["gflops"])}

    results["load_average_after"] = os.getloadavg()
    print(f"wrote {write_json('generation', results)}")


if __name__ == "__main__":
    main()
