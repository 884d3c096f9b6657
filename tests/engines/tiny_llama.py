"""Writes a tiny random float32 Llama as a Hugging Face folder that MAX and vLLM both serve.

Only numpy, safetensors and tokenizers are needed (both engines' virtualenvs have them). The
vocabulary is printable ASCII plus two-letter merges (288 tokens, a multiple of 32), so every
token decodes to readable text; the language-model head is scaled up so that greedy decoding has
clear winners and two float32 implementations pick the same tokens.

usage: python tiny_llama.py OUT_DIR
"""

import json
import os
import string
import sys

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models

HIDDEN, HEADS, KV_HEADS, LAYERS, FFN, VOCAB, CONTEXT = 128, 2, 2, 2, 256, 288, 512
SPECIALS = ["<unk>", "<s>", "</s>"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def vocabulary():
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # 96 incl. space and \n
    tokens = SPECIALS + chars
    merges = []
    letters = string.ascii_lowercase
    for a in letters:
        for b in letters:
            if len(tokens) == VOCAB:
                return tokens, merges
            tokens.append(a + b)
            merges.append((a, b))
    return tokens, merges


def write_tokenizer(out):
    tokens, merges = vocabulary()
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    tok.save(os.path.join(out, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": CONTEXT,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": TEMPLATE,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f)


def write_weights(out):
    rng = np.random.default_rng(1234)
    head_dim = HIDDEN // HEADS

    def w(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"model.embed_tokens.weight": w(VOCAB, HIDDEN, scale=1.0), "model.norm.weight": np.ones(HIDDEN, np.float32)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        t[p + "self_attn.q_proj.weight"] = w(HEADS * head_dim, HIDDEN)
        t[p + "self_attn.k_proj.weight"] = w(KV_HEADS * head_dim, HIDDEN)
        t[p + "self_attn.v_proj.weight"] = w(KV_HEADS * head_dim, HIDDEN)
        t[p + "self_attn.o_proj.weight"] = w(HIDDEN, HEADS * head_dim)
        t[p + "mlp.gate_proj.weight"] = w(FFN, HIDDEN)
        t[p + "mlp.up_proj.weight"] = w(FFN, HIDDEN)
        t[p + "mlp.down_proj.weight"] = w(HIDDEN, FFN)
    head = w(VOCAB, HIDDEN, scale=0.6)
    head[: len(SPECIALS)] = 0.0  # never <unk>, <s> or </s>: generations run to max_tokens
    t["lm_head.weight"] = head
    save_file(t, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


def write_config(out):
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HIDDEN // HEADS,
        "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB,
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
        "dtype": "float32",
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    write_tokenizer(out)
    write_weights(out)
    write_config(out)


if __name__ == "__main__":
    main()
