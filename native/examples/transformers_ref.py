#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers for `transformers_check` (the native engine
loading safetensors folders).

    python3 native/examples/transformers_ref.py OUT_DIR [--device cuda|cpu]

Builds three tiny random models (seeded, no network), saves each with `save_pretrained` as
safetensors into OUT_DIR/<name>/, runs a few token-id prompts through transformers and writes
the logits of every position:

- `llama-bf16-sharded`: LlamaForCausalLM in bfloat16, untied output, rope_theta 10000, saved in
  several shards with `model.safetensors.index.json`.
- `llama3rope-bf16-tied`: LlamaForCausalLM in bfloat16, tied embeddings, head_dim 128 (not
  hidden/heads), rope_theta 500000 with Llama 3 rope scaling whose original context (32) is
  short enough that the scaled frequencies change the logits of these prompts.
- `mistral-f16`: MistralForCausalLM in float16.

Shapes: hidden 256, 2 layers, 4 query / 2 key-value heads, ffn 512, vocab 512. The output
matrix is scaled up and the norm weights randomised so logits span a few units and every
tensor matters.

For each model two references, each the concatenation over prompts of `len x vocab` float32
little-endian values: `<name>.f32.bin` (the saved weights loaded in float32: the same weights,
f32 arithmetic) and `<name>.native.bin` (loaded in the saved dtype: transformers' own bf16/f16
arithmetic). `reference.json` lists models, prompts and files. Runs in seconds; the default
device is the GPU when torch sees one (float16 matmuls need it on older torch), else the CPU.
"""

import argparse
import array
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM  # noqa: E402

MAJOR = int(transformers.__version__.split(".")[0])
VOCAB = 512
PROMPT_LENGTHS = [1, 7, 16, 17, 29]  # 16 and 17 straddle a KV block of 16; 29 crosses it

MODELS = [
    dict(
        name="llama-bf16-sharded",
        arch="llama",
        dtype=torch.bfloat16,
        tie=False,
        head_dim=64,
        theta=10000.0,
        scaling=None,
        shard="200KB",
        seed=1,
    ),
    dict(
        name="llama3rope-bf16-tied",
        arch="llama",
        dtype=torch.bfloat16,
        tie=True,
        head_dim=128,
        theta=500000.0,
        scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
        shard=None,
        seed=2,
    ),
    dict(
        name="mistral-f16",
        arch="mistral",
        dtype=torch.float16,
        tie=False,
        head_dim=64,
        theta=1000000.0,
        scaling=None,
        shard=None,
        seed=3,
    ),
]


def make_config(m):
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=m["head_dim"],
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        initializer_range=0.05,
        tie_word_embeddings=m["tie"],
        hidden_act="silu",
    )
    if MAJOR >= 5:
        rp = {"rope_type": "default"} if m["scaling"] is None else dict(m["scaling"])
        rp["rope_theta"] = m["theta"]
        kw["rope_parameters"] = rp
    else:
        kw["rope_theta"] = m["theta"]
        kw["rope_scaling"] = m["scaling"]
    if m["arch"] == "mistral":
        kw["sliding_window"] = 4096
        return MistralConfig(**kw), MistralForCausalLM
    kw["attention_bias"] = False
    kw["mlp_bias"] = False
    return LlamaConfig(**kw), LlamaForCausalLM


def build_and_save(m, out):
    config, cls = make_config(m)
    torch.manual_seed(m["seed"])
    model = cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
        model.get_output_embeddings().weight.mul_(4.0)
    model = model.to(m["dtype"])
    kw = {} if m["shard"] is None else {"max_shard_size": m["shard"]}
    try:
        model.save_pretrained(out, safe_serialization=True, **kw)
    except TypeError:  # transformers versions that always write safetensors
        model.save_pretrained(out, **kw)
    files = sorted(os.listdir(out))
    if not any(f.endswith(".safetensors") for f in files) or any(f.endswith(".bin") for f in files):
        sys.exit(f"{out}: expected safetensors files, got {files}")
    if m["shard"] is not None and "model.safetensors.index.json" not in files:
        sys.exit(f"{out}: expected a sharded save, got {files}")
    return cls, files


def load(cls, path, dtype, device):
    kw = {"dtype": dtype} if MAJOR >= 5 else {"torch_dtype": dtype}
    model = cls.from_pretrained(path, local_files_only=True, attn_implementation="eager", **kw)
    return model.to(device).eval()


def run(model, prompts, device):
    rows = []
    with torch.no_grad():
        for ids in prompts:
            out = model(torch.tensor([ids], device=device)).logits[0].float().cpu()
            if out.shape != (len(ids), VOCAB):
                sys.exit(f"unexpected logits shape {tuple(out.shape)}")
            rows.append(out)
    return torch.cat(rows)


def write_f32(path, t):
    a = array.array("f", t.contiguous().view(-1).tolist())
    if sys.byteorder != "little":
        a.byteswap()
    with open(path, "wb") as f:
        a.tofile(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device for the reference runs (default: cuda if available, else cpu)",
    )
    args = ap.parse_args()
    # f32 references in full f32 (no TF32 on GPUs).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    os.makedirs(args.out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    prompts = [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    manifest = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": args.device,
        "models": [],
    }
    for m in MODELS:
        path = os.path.join(args.out_dir, m["name"])
        os.makedirs(path, exist_ok=True)
        for f in os.listdir(path):  # a clean folder: no stale shards from another save
            os.remove(os.path.join(path, f))
        cls, files = build_and_save(m, path)
        ref32 = run(load(cls, path, torch.float32, args.device), prompts, args.device)
        refnat = run(load(cls, path, m["dtype"], args.device), prompts, args.device)
        write_f32(os.path.join(args.out_dir, m["name"] + ".f32.bin"), ref32)
        write_f32(os.path.join(args.out_dir, m["name"] + ".native.bin"), refnat)
        scale = ref32.abs().max().item()
        own = (refnat - ref32).abs().max().item()
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        rope = {k: cfg[k] for k in ("rope_theta", "rope_scaling", "rope_parameters") if k in cfg}
        print(
            f"{m['name']}: {files}; rope {rope}; logits max |f32| {scale:.3f}; "
            f"transformers {str(m['dtype']).removeprefix('torch.')} vs f32 max |diff| {own:.4f} ({own / scale:.2%})"
        )
        manifest["models"].append(
            {
                "name": m["name"],
                "dir": m["name"],
                "dtype": str(m["dtype"]).removeprefix("torch."),
                "vocab": VOCAB,
                "prompts": prompts,
                "f32": m["name"] + ".f32.bin",
                "native": m["name"] + ".native.bin",
            }
        )
    with open(os.path.join(args.out_dir, "reference.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {args.out_dir}/reference.json (transformers {transformers.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
