"""GGUF checkpoints (llama.cpp's format) -> a cached Hugging Face-format folder.

The first load of a .gguf dequantises every tensor with the `gguf` package (llama.cpp's
own reader), undoes llama.cpp's Q/K row permutation, rebuilds the config and the
tokenizer from the metadata, and writes config.json, model.safetensors (float32) and
the tokenizer files into the conversion cache. Every later load reads that folder
through `loading.load_hf_folder` (memory-mapped, no dequantisation), so a GGUF and an
HF checkpoint share one code path from there on.

Cache: `$RLBIAS_CACHE` or `~/.cache/rlbias_jax`, one folder per GGUF keyed by its
absolute path, size, modification time and `CONVERTER_VERSION`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from rlbias_jax.models.loading import ModelLoadError

CONVERTER_VERSION = 1
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}  # GGUF general.architecture -> HF model_type
PERMUTED_QK = {"llama"}  # llama.cpp's converter interleaves Q/K rows for these (see `unpermute_qk`)

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

# Pre-tokenizer split patterns of the byte-level BPE vocabularies llama.cpp names in `tokenizer.ggml.pre`.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
# GPT-2's own regex, with single digits split off first (llama.cpp: "\p{N}" then the GPT-2 pattern)
_GPT2_WITH_DIGITS = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}
_GPT2_PLAIN = {"gpt-2", "gpt2", "default", "olmo", "jais", "phi-2"}


def conversion_cache_dir() -> Path:
    return Path(os.environ.get("RLBIAS_CACHE") or "~/.cache/rlbias_jax").expanduser()


def converted_folder(path: Path) -> Path:
    """The cached HF-format folder for the GGUF at `path`, converting it on first use."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"GGUF file {path} does not exist") from None
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERTER_VERSION}".encode()).hexdigest()[:16]
    folder = conversion_cache_dir() / "gguf" / f"{path.stem}-{key}"
    if (folder / ".complete").is_file():
        return folder
    staging = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_hf_folder(path, staging)
        (staging / ".complete").write_text(str(path))
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt
        os.replace(staging, folder)
    except OSError:
        if not (folder / ".complete").is_file():  # lost a race to another process: fine if it finished
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_hf_folder(path: Path, out: Path) -> None:
    """Convert the GGUF at `path` into config.json + model.safetensors (+ tokenizer files) in `out`."""
    from safetensors.numpy import save_file
    from transformers import AutoConfig

    reader = open_reader(path)
    hf_config = hf_config_from_gguf(reader, path)
    tensors = hf_tensors_from_gguf(reader, hf_config, path)
    save_file(tensors, str(out / "model.safetensors"), metadata={"source": str(path)})
    AutoConfig.for_model(**hf_config).save_pretrained(out)
    tokenizer = tokenizer_from_gguf(reader, path)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def open_reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except FileNotFoundError:
        raise ModelLoadError(f"GGUF file {path} does not exist") from None
    except Exception as error:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {type(error).__name__}: {error}") from error


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def hf_config_from_gguf(reader, path: Path) -> dict:
    """HF `config.json` fields (model_type included) from the GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ModelLoadError(f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(GGUF_ARCHITECTURES)})")

    def required(key):
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise ModelLoadError(f"{path}: metadata key {arch}.{key} is missing")
        return value

    d_model, n_head = int(required("embedding_length")), int(required("attention.head_count"))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", d_model // n_head))
    rope_dim = _field(reader, f"{arch}.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise ModelLoadError(f"{path}: partial rotary embeddings ({arch}.rope.dimension_count={rope_dim}) are not supported")
    names = {tensor.name for tensor in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ModelLoadError(f"{path}: tensor 'rope_freqs.weight' (llama3 rope scaling baked into a tensor) is not supported")
    scaling = _field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ModelLoadError(f"{path}: {arch}.rope.scaling.type={scaling!r} is not supported")
    rope = {"rope_type": "default", "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0))}
    if scaling == "linear":
        rope.update(rope_type="linear", factor=float(required("rope.scaling.factor")))
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise ModelLoadError(f"{path}: tensor 'token_embd.weight' is missing")
    config = {
        "model_type": GGUF_ARCHITECTURES[arch],
        "vocab_size": int(embed.shape[-1]),  # ggml shapes list the fastest axis first
        "hidden_size": d_model,
        "intermediate_size": int(required("feed_forward_length")),
        "num_hidden_layers": int(required("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 2048)),
        "rms_norm_eps": float(required("attention.layer_norm_rms_epsilon")),
        "rope_parameters": rope,
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
    }
    for key in ("bos", "eos", "padding"):
        token_id = _field(reader, f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            config[f"{'pad' if key == 'padding' else key}_token_id"] = int(token_id)
    return config


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def _hf_shape(name: str, config: dict) -> tuple[int, ...]:
    """The HF-layout shape ([out, in] for Linear weights) that `config` implies for tensor `name`."""
    d, ff, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_dim = config["num_attention_heads"] * config["head_dim"]
    kv_dim = config["num_key_value_heads"] * config["head_dim"]
    suffix = name.split(".", 3)[-1] if name.startswith("model.layers.") else name
    shapes = {
        "model.embed_tokens.weight": (vocab, d), "lm_head.weight": (vocab, d), "model.norm.weight": (d,),
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (q_dim, d), "self_attn.q_proj.bias": (q_dim,),
        "self_attn.k_proj.weight": (kv_dim, d), "self_attn.k_proj.bias": (kv_dim,),
        "self_attn.v_proj.weight": (kv_dim, d), "self_attn.v_proj.bias": (kv_dim,),
        "self_attn.o_proj.weight": (d, q_dim),
        "mlp.gate_proj.weight": (ff, d), "mlp.up_proj.weight": (ff, d), "mlp.down_proj.weight": (d, ff),
    }
    return shapes[suffix]


def unpermute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `permute` of Q/K rows (per head: interleaved pairs -> HF's two halves)."""
    half = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def hf_tensors_from_gguf(reader, config: dict, path: Path) -> dict[str, np.ndarray]:
    """Dequantised float32 tensors under HF names, Q/K un-permuted, shapes checked against `config`."""
    from gguf.quants import dequantize

    arch = _field(reader, "general.architecture")
    n_layer = config["num_hidden_layers"]
    tensors = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        layer_ok = not name or not name.startswith("model.layers.") or int(name.split(".")[2]) < n_layer
        if name is None or not layer_ok:
            raise ModelLoadError(f"tensor {tensor.name!r} in {path} has no place in a {arch} model")
        try:
            array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        except (NotImplementedError, ValueError) as error:
            raise ModelLoadError(f"tensor {tensor.name!r} in {path}: cannot dequantise {tensor.tensor_type.name} ({error})") from None
        want = _hf_shape(name, config)
        if array.shape != want:
            raise ModelLoadError(f"tensor {tensor.name!r} in {path} has shape {array.shape}, but the metadata implies {want}")
        if arch in PERMUTED_QK and ".q_proj." in name:
            array = unpermute_qk(array, config["num_attention_heads"])
        elif arch in PERMUTED_QK and ".k_proj." in name:
            array = unpermute_qk(array, config["num_key_value_heads"])
        tensors[name] = np.ascontiguousarray(array)
    return tensors


def tokenizer_from_gguf(reader, path: Path):
    """A transformers fast tokenizer rebuilt from the GGUF vocabulary and merges, or None (with a warning)."""
    model = _field(reader, "tokenizer.ggml.model")
    if model is None:
        return None
    if model != "gpt2":
        return _sentencepiece_tokenizer(path, model)
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if pre not in _SPLITS and pre not in _GPT2_WITH_DIGITS and pre not in _GPT2_PLAIN:
        warnings.warn(f"{path}: unknown pre-tokenizer tokenizer.ggml.pre={pre!r}; loading without a tokenizer")
        return None
    return _byte_level_tokenizer(reader, pre)


def _byte_level_tokenizer(reader, pre: str):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = _field(reader, "tokenizer.ggml.tokens")
    token_types = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(merge.split(" ", 1)) for merge in _field(reader, "tokenizer.ggml.merges", [])]
    backend = Tokenizer(models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _SPLITS)
    if pre in _SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"), byte_level]
        )
    elif pre in _GPT2_WITH_DIGITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    # llama.cpp token types: 3 = control (special, never split), 4 = user-defined (matched whole)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, token_types) if k == 3])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, token_types) if k == 4])

    def token(key):
        token_id = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if token_id is None else tokens[int(token_id)]

    bos = token("bos")
    if _field(reader, "tokenizer.ggml.add_bos_token", False) and bos is not None:
        bos_id = tokens.index(bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=token("eos"), unk_token=token("unknown"),
        pad_token=token("padding"),
    )
    chat_template = _field(reader, "tokenizer.chat_template")
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def _sentencepiece_tokenizer(path: Path, model: str):
    """SentencePiece-style vocabularies: transformers' own GGUF tokenizer conversion (needs no torch)."""
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as error:
        warnings.warn(f"{path}: tokenizer model {model!r} could not be rebuilt ({error}); loading without a tokenizer")
        return None
