"""Hugging Face's config.json -> minivtp's decoder Config, for LLaMA and Qwen2 checkpoints and the text models of
Qwen2.5-VL and Qwen3-VL: how their names map to ours, said out loud beside the loader (model.py reads only its own
Config).

    >>> cfg = config_from_hf(dict(model_type="qwen2", vocab_size=10, hidden_size=16, num_hidden_layers=1,
    ...                           num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
    ...                           rope_theta=1e6))
    >>> cfg.n_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.qkv_bias
    (1, 8, 1000000.0, True)
"""

from minivtp.model import Config

QWEN2_LAYERS = ("qwen2", "qwen2_vl_text", "qwen2_5_vl_text")  # bias on q, k, v
QWEN3_LAYERS = ("qwen3", "qwen3_vl_text")  # per-head q/k RMSNorm, no bias
MROPE_DEFAULTS = {"qwen2_vl_text": (16, 24, 24), "qwen2_5_vl_text": (16, 24, 24), "qwen3_vl_text": (24, 20, 20)}


def config_from_hf(hf: dict) -> Config:
    """Build from a Hugging Face LLaMA, Qwen2 or Qwen2.5-VL / Qwen3-VL text `config.json` (already parsed)."""
    if (kind := hf.get("model_type", "llama")) not in ("llama",) + QWEN2_LAYERS + QWEN3_LAYERS:
        raise ValueError(f"model_type {kind!r} is not a LLaMA or Qwen2 decoder (nor a Qwen2.5-VL / Qwen3-VL "
                         "text model)")
    check_sliding_window(hf)
    if (act := hf.get("hidden_act", "silu")) != "silu":
        raise ValueError(f"hidden_act {act!r} is not supported (LLaMA uses 'silu')")
    # Two ways transformers has written RoPE settings: the old top-level `rope_theta` + `rope_scaling`,
    # and (v5) one `rope_parameters` dict holding the theta and the scaling together.
    rope = {**(hf.get("rope_parameters") or {}), **(hf.get("rope_scaling") or {})}
    if "type" in rope and "rope_type" not in rope:  # the oldest spelling
        rope["rope_type"] = rope.pop("type")
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    # M-RoPE (Qwen2.5-VL, Qwen3-VL): the sections ride in the same dict; its rope_type "mrope" is plain RoPE's speeds
    # (transformers' defaults where the config names none: [16, 24, 24] for Qwen2/2.5-VL, [24, 20, 20] for Qwen3-VL,
    # whose text model always interleaves)
    mrope = tuple(rope.pop("mrope_section", MROPE_DEFAULTS.get(kind, ())))
    interleaved = rope.pop("mrope_interleaved", False) or kind == "qwen3_vl_text"
    rope = {} if rope.get("rope_type", "default") in ("default", "mrope") else rope
    if missing := [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if k not in hf]:
        raise ValueError(f"config.json has no {', '.join(missing)}")
    n_heads = hf["num_attention_heads"]
    return Config(vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
                  n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
                  hidden_dim=hf["intermediate_size"], head_dim=hf.get("head_dim") or 0,
                  norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_scaling=rope,
                  max_seq_len=hf.get("max_position_embeddings", 4096),
                  tie_embeddings=hf.get("tie_word_embeddings", False),
                  attention_bias=hf.get("attention_bias", False), mlp_bias=hf.get("mlp_bias", False),
                  qkv_bias=kind in QWEN2_LAYERS, qk_norm=kind in QWEN3_LAYERS, mrope_section=mrope,
                  mrope_layout="interleaved" if interleaved else "chunked")


def check_sliding_window(hf: dict):
    """Qwen2's sliding window: accepted where it hides nothing (no window, or one longer than any prompt we accept,
    so every layer is full causal attention), refused by name where it would hide keys."""
    n, window = hf.get("num_hidden_layers", 0), hf.get("sliding_window")
    if not hf.get("use_sliding_window") or window is None or window >= hf.get("max_position_embeddings", 4096):
        return
    max_window_layers = hf.get("max_window_layers", n)
    if "sliding_attention" in (types := hf.get("layer_types") or ["sliding_attention" if i >= max_window_layers
                                                                   else "full" for i in range(n)]):
        raise ValueError(f"use_sliding_window is true with sliding_window={window} (< max_position_embeddings) on "
                         f"layers {types.index('sliding_attention')}.. (max_window_layers="
                         f"{hf.get('max_window_layers')}): minivtp's attention is full causal only")
