"""Loaders: GGUF files written here from tiny HF models (Q/K permutation undone, conversion cache),
repo ids in a local HF cache, and bad input raising errors that name the file or tensor."""

import json
import shutil

import gguf
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlbias_jax.models.loading import ModelLoadError, load_pretrained  # noqa: E402

VOCAB = 64
_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
    **{f"self_attn.{x}_proj.{kind}": f"attn_{x}.{kind}" for x in "qkv" for kind in ("weight", "bias")},
}


def _tiny_model(kind="llama"):
    torch.manual_seed(0)
    config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[kind]
    config = config_class(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-5)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    model = _tiny_model()
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    return model, folder


def _llama_cpp_permute(weight, n_head):
    """What llama.cpp's convert_hf_to_gguf.py does to Q/K rows of llama-architecture models."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model, path, arch="llama", shape_override=None):
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    for name, tensor in model.state_dict().items():
        array = tensor.numpy().astype(np.float32)
        layer, _, suffix = name.removeprefix("model.layers.").partition(".")
        gguf_name = _GGUF_NAMES[name] if name in _GGUF_NAMES else f"blk.{layer}.{_GGUF_NAMES[suffix]}"
        if arch == "llama" and gguf_name.endswith("attn_q.weight"):
            array = _llama_cpp_permute(array, config.num_attention_heads)
        if arch == "llama" and gguf_name.endswith("attn_k.weight"):
            array = _llama_cpp_permute(array, config.num_key_value_heads)
        if shape_override and gguf_name == shape_override:
            array = array[:-1]
        writer.add_tensor(gguf_name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _max_delta(loaded, model):
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 9)).astype(np.int32)
    ours = np.asarray(loaded.apply_fn(loaded.params, jnp.asarray(tokens)).logits)
    with torch.no_grad():
        return np.abs(ours - model(torch.from_numpy(tokens).long()).logits.numpy()).max()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_matches_source_model_and_is_cached(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("RLBIAS_CACHE", str(tmp_path / "cache"))
    model = _tiny_model(arch)
    path = write_gguf(model, tmp_path / f"tiny-{arch}.gguf", arch)
    loaded = load_pretrained(str(path))
    assert loaded.config.n_kv_head == 2 and loaded.config.rope_theta == 500000.0
    assert loaded.config.qkv_bias == (arch == "qwen2") and not loaded.config.tie_word_embeddings
    assert loaded.tokenizer is None  # this file carries no vocabulary
    delta = _max_delta(loaded, model)
    print(f"\ntiny {arch} GGUF (F32): max |Δ logits| vs source model = {delta:.2e}")
    assert delta <= 1e-4
    (cached,) = (tmp_path / "cache" / "gguf").iterdir()
    assert (cached / ".complete").is_file() and (cached / "model.safetensors").is_file()
    path.write_bytes(b"")  # the cache is keyed by the file, so a changed file is not served from it
    with pytest.raises(ModelLoadError, match=str(path)):
        load_pretrained(str(path))


def test_repo_id_in_local_hf_cache(llama_folder, tmp_path, monkeypatch):
    model, folder = llama_folder
    repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_pretrained("tiny-org/tiny-llama")
    assert loaded.source == str(repo / "snapshots" / commit)
    assert _max_delta(loaded, model) <= 1e-4


def test_missing_repo_id_names_repo_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as error:
        load_pretrained("nobody/no-such-model")
    message = str(error.value)
    assert "nobody/no-such-model" in message and str(tmp_path / "hub") in message and "HF_HUB_OFFLINE" in message


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as error:
        load_pretrained(str(tmp_path / "absent.gguf"))
    assert str(tmp_path / "absent.gguf") in str(error.value)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError) as error:
        load_pretrained(str(tmp_path))
    assert str(tmp_path / "model.safetensors") in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_pretrained(str(tmp_path / "empty"))


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    with pytest.raises(ModelLoadError, match="'bert'") as error:
        load_pretrained(str(tmp_path))
    assert str(tmp_path / "config.json") in str(error.value)


def _rewrite_safetensors(folder, target, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(target / "model.safetensors")
    edit(tensors)
    shutil.copy(folder / "config.json", target / "config.json")
    save_file(tensors, target / "model.safetensors")


def test_wrong_shape_and_missing_tensors_are_named(llama_folder, tmp_path):
    _, folder = llama_folder
    name = "model.layers.1.self_attn.k_proj.weight"
    shutil.copy(folder / "model.safetensors", tmp_path / "model.safetensors")
    _rewrite_safetensors(folder, tmp_path, lambda t: t.__setitem__(name, t[name][:-1]))
    with pytest.raises(ModelLoadError, match=rf"'{name}' in .*model.safetensors has shape \(15, 32\).*\(16, 32\)"):
        load_pretrained(str(tmp_path))
    _rewrite_safetensors(folder, tmp_path, lambda t: t.pop(name))
    with pytest.raises(ModelLoadError, match=rf"'{name}' is missing"):
        load_pretrained(str(tmp_path))
    _rewrite_safetensors(folder, tmp_path, lambda t: t.update({name: np.zeros((16, 32), np.float32),
                                                               "model.layers.9.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ModelLoadError, match="'model.layers.9.extra.weight'.*no place"):
        load_pretrained(str(tmp_path))


def test_bad_gguf_files_are_named(llama_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("RLBIAS_CACHE", str(tmp_path / "cache"))
    model, _ = llama_folder
    wrong_shape = write_gguf(model, tmp_path / "wrong.gguf", shape_override="blk.0.ffn_up.weight")
    with pytest.raises(ModelLoadError, match=r"'blk\.0\.ffn_up\.weight' in .*wrong\.gguf has shape \(63, 32\)"):
        load_pretrained(str(wrong_shape))
    other_arch = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(other_arch), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=r"other\.gguf: GGUF architecture 'mamba' is not supported"):
        load_pretrained(str(other_arch))
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match=r"garbage\.gguf is not a readable GGUF file"):
        load_pretrained(str(garbage))
    assert issubclass(ModelLoadError, ValueError)


def test_bad_dtype_is_rejected(llama_folder):
    with pytest.raises(ModelLoadError, match="float16"):
        load_pretrained(str(llama_folder[1]), dtype="float16")
