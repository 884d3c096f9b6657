#!/usr/bin/env python3
"""Side-by-side benchmark of HyperLlama against what users would run instead.

Servers (all on the same GGUF, same threads, greedy):
  llama-server --parallel 1   (how Ollama runs llama.cpp by default)
  llama-server --parallel 8   (llama.cpp tuned by hand)
  HyperLlama via its OpenAI endpoint and via its Ollama endpoint

Scenarios: 1 client; 8 concurrent clients; 8 clients sharing a ~1k-token system prompt; time to
first token of a repeated long prompt (cold vs warm). Peers and HyperLlama runs alternate and
repeat (these CPUs are noisy); medians and spread are reported, with ratios to each peer.

Only the standard library is used. Servers are started by bench/run.sh, which passes their
addresses and pids here.
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import threading
import time
import urllib.request

WORDS = (
    "the river carried small boats past the old mill while children counted clouds and the "
    "baker sold warm bread to travellers who had walked since dawn along the northern road "
).split()


def text_of(n_words, seed):
    return " ".join(WORDS[(i * 7 + seed) % len(WORDS)] for i in range(n_words))


def post_stream(url, body, headers, on_line):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                on_line(line)


class Result:
    def __init__(self):
        self.ttft = None
        self.tokens = 0
        self.text = ""
        self.end = None


def run_openai(base, model, prompt, system, max_tokens):
    """One streamed /v1/chat/completions (or /v1/completions without a system prompt)."""
    r = Result()
    start = time.perf_counter()
    if system:
        url = base + "/v1/chat/completions"
        body = {"model": model, "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}]}
    else:
        url = base + "/v1/completions"
        body = {"model": model, "prompt": prompt}
    body.update({"max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}})

    def on_line(line):
        if not line.startswith("data:"):
            return
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if event.get("usage"):
            r.tokens = event["usage"].get("completion_tokens", r.tokens)
        for choice in event.get("choices", []):
            piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            if piece and r.ttft is None:
                r.ttft = time.perf_counter() - start
            r.text += piece

    post_stream(url, body, {}, on_line)
    r.end = time.perf_counter() - start
    return r


def run_ollama(base, model, prompt, system, max_tokens):
    """One streamed /api/generate (raw continuation) or /api/chat with a system prompt."""
    r = Result()
    start = time.perf_counter()
    options = {"temperature": 0, "num_predict": max_tokens}
    if system:
        url = base + "/api/chat"
        body = {"model": model, "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}], "options": options}
    else:
        url = base + "/api/generate"
        body = {"model": model, "prompt": prompt, "raw": True, "options": options}

    def on_line(line):
        event = json.loads(line)
        piece = event.get("response") or (event.get("message") or {}).get("content") or ""
        if piece and r.ttft is None:
            r.ttft = time.perf_counter() - start
        r.text += piece
        if event.get("done"):
            r.tokens = event.get("eval_count", 0)

    post_stream(url, body, {}, on_line)
    r.end = time.perf_counter() - start
    return r


def peak_rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def scenario(server, name, clients, prompt_words, system_words, max_tokens, seed, tag=""):
    """`tag` starts every prompt (and the system prompt): a run tagged differently shares no prefix
    with it, so no server is timed on KV another run (or another server on the same port) left."""
    client = run_openai if server["api"] == "openai" else run_ollama
    system = f"[{tag}] " + text_of(system_words, 99) if system_words else ""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [
            pool.submit(client, server["url"], server["model"], (f"[{tag}-{i}] " if tag else "") + text_of(prompt_words, seed + i), system, max_tokens)
            for i in range(clients)
        ]
        results = [f.result() for f in futures]
    wall = time.perf_counter() - start
    tokens = sum(r.tokens for r in results)
    return {
        "tok_s": tokens / wall if wall > 0 else 0.0,
        "ttft": [r.ttft for r in results if r.ttft is not None],
        "tokens": tokens,
        "texts": [r.text for r in results],
    }


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q * (len(values) - 1))))
    return values[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", required=True, help="JSON list of {name,url,api,model,pids}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--out", required=True, help="results directory")
    args = ap.parse_args()
    servers = json.loads(args.servers)

    scenarios = [
        ("1 client", dict(clients=1, prompt_words=96, system_words=0)),
        ("8 concurrent", dict(clients=8, prompt_words=96, system_words=0)),
        ("8 shared 1k system prompt", dict(clients=8, prompt_words=32, system_words=760)),
    ]
    results = {s["name"]: {} for s in servers}
    # Correctness first: the same greedy prompt must give the same text on every server.
    reference = {}
    for s in servers:
        r = scenario(s, "check", 1, 96, 0, 32, seed=0)
        reference[s["name"]] = r["texts"][0]
    texts = set(reference.values())
    agree = len(texts) == 1
    print(f"greedy agreement across servers: {'yes' if agree else 'NO'}", file=sys.stderr)
    for name, text in reference.items():
        print(f"  {name}: {text[:80]!r}", file=sys.stderr)

    for rep in range(args.repeats):
        for label, params in scenarios:
            for k, s in enumerate(servers):  # alternate servers inside each repetition
                tag = f"r{rep}s{k}"  # cold for every run: no server reuses another run's prompts
                r = scenario(s, label, params["clients"], params["prompt_words"], params["system_words"], args.max_tokens, seed=rep * 100, tag=tag)
                entry = results[s["name"]].setdefault(label, {"tok_s": [], "ttft": [], "tokens": []})
                entry["tok_s"].append(r["tok_s"])
                entry["ttft"] += r["ttft"]
                entry["tokens"].append(r["tokens"])
                print(f"rep {rep} {label:28s} {s['name']:28s} {r['tok_s']:7.1f} tok/s ({r['tokens']} tokens)", file=sys.stderr)

    # Time to first token of a long prompt: cold (first time) vs warm (repeated).
    for k, s in enumerate(servers):
        # Unique per server: the two HyperLlama endpoints share one daemon and its prefix cache.
        long_prompt = f"[ttft-{k}] " + text_of(700, 7)
        client = run_openai if s["api"] == "openai" else run_ollama
        cold = client(s["url"], s["model"], long_prompt, "", 8).ttft
        warm = [client(s["url"], s["model"], long_prompt, "", 8).ttft for _ in range(3)]
        results[s["name"]]["repeated long prompt"] = {"cold_ttft": cold, "warm_ttft": warm}
        results[s["name"]]["peak_rss_kib"] = peak_rss_kib(s["pids"] + sum((children(p) for p in s["pids"]), []))

    summary = []
    for s in servers:
        row = {"server": s["name"]}
        for label, _ in scenarios:
            e = results[s["name"]][label]
            row[label] = {
                "tok_s_median": statistics.median(e["tok_s"]),
                "tok_s_min": min(e["tok_s"]),
                "tok_s_max": max(e["tok_s"]),
                "ttft_p50": pct(e["ttft"], 0.5),
                "ttft_p95": pct(e["ttft"], 0.95),
            }
        lp = results[s["name"]]["repeated long prompt"]
        row["long prompt cold ttft"] = lp["cold_ttft"]
        row["long prompt warm ttft"] = statistics.median([w for w in lp["warm_ttft"] if w is not None] or [float("nan")])
        row["peak_rss_mib"] = results[s["name"]]["peak_rss_kib"] / 1024
        summary.append(row)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"greedy_agreement": agree, "reference_texts": reference, "summary": summary, "raw": results}, f, indent=2)

    lines = ["| server | " + " | ".join(f"{l} tok/s (min–max)" for l, _ in scenarios) + " | TTFT p50/p95 8 conc (s) | long prompt TTFT cold → warm (s) | peak RSS MiB |",
             "|---" * (len(scenarios) + 4) + "|"]
    for row in summary:
        cells = [f"{row[l]['tok_s_median']:.1f} ({row[l]['tok_s_min']:.0f}–{row[l]['tok_s_max']:.0f})" for l, _ in scenarios]
        c8 = row["8 concurrent"]
        lines.append(f"| {row['server']} | " + " | ".join(cells) + f" | {c8['ttft_p50']:.2f}/{c8['ttft_p95']:.2f} | {row['long prompt cold ttft']:.2f} → {row['long prompt warm ttft']:.3f} | {row['peak_rss_mib']:.0f} |")
    lines.append("")
    lines.append("Ratios (HyperLlama ÷ peer, median tok/s):")
    lines.append("")
    peers = [r for r in summary if r["server"].startswith("llama-server")]
    ours = [r for r in summary if not r["server"].startswith("llama-server")]
    lines.append("| HyperLlama endpoint | peer | " + " | ".join(l for l, _ in scenarios) + " | RSS ratio |")
    lines.append("|---" * (len(scenarios) + 3) + "|")
    for o in ours:
        for p in peers:
            ratios = [o[l]["tok_s_median"] / p[l]["tok_s_median"] if p[l]["tok_s_median"] else float("nan") for l, _ in scenarios]
            rss = o["peak_rss_mib"] / p["peak_rss_mib"] if p["peak_rss_mib"] else float("nan")
            lines.append(f"| {o['server']} | {p['server']} | " + " | ".join(f"{x:.2f}x" for x in ratios) + f" | {rss:.2f} |")
    # Aggregate tok/s is tokens / wall time of the slowest request: a greedy continuation that ends
    # at EOS early lowers it. Say where that happened, so ratios are read with it in mind.
    full = {label: params["clients"] * args.max_tokens for label, params in scenarios}
    short = [f"{name} / {label}: {n} of {full[label]}" for name, r in results.items() for label, _ in scenarios
             for n in r[label]["tokens"] if n < full[label]]
    if short:
        lines.append("\nRuns with fewer tokens than asked for (EOS before max tokens): " + "; ".join(short))
    for o in ours:
        cold, warm = o["long prompt cold ttft"], o["long prompt warm ttft"]
        if cold and warm:
            lines.append(f"\n{o['server']}: repeated long prompt TTFT {cold:.2f}s cold → {warm:.3f}s warm ({cold / warm:.1f}x faster)")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
