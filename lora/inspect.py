"""What a LoRA adapter did to its model, from the files alone: a PEFT adapter directory, one of this
study's factor files (:func:`lora.save_lora` / :func:`lora.save_factors` / :func:`lora.save_delta_svd`)
or a run log beside one.  ``python -m lora inspect`` (:mod:`lora.__main__`) is the command line.

Per adapted layer, with ΔW = s·BA (out×in; s = α/r, or α/√r with rsLoRA) read from the factors:

* ΔW's singular values from the factors (:func:`lora.spectra.lowrank_svd`: QR of B and Aᵀ, SVD of the
  k×k core; ΔW itself is never formed), its effective rank exp H(σ/Σσ), stable rank ‖ΔW‖²_F/‖ΔW‖²_2 and
  the energy Σ_{i<k} σ_i² / Σ σ_i² of its top-k directions;
* with the base weight W: the principal angles between ΔW's top-r left (column) / right (row) singular
  subspaces and W's top-k ones, their mean cos² (the study's *overlap*; max(r, k)/n for random
  subspaces of Rⁿ), the share of ‖ΔW‖²_F inside W's top-k output subspace, ‖U_kᵀΔW‖²_F/‖ΔW‖²_F (and
  input subspace, ‖ΔW V_k‖²_F/‖ΔW‖²_F; k/n at random), the amplification ‖ΔW‖_F / ‖U_rᵀ W V_r‖_F
  (U_r, V_r: ΔW's own top-r singular vectors; Hu et al. 2021, §7.3) and the intruder dimensions of
  W + ΔW (Shuttleworth et al. 2024: top-k left singular vectors of W + ΔW whose largest |cos| with every
  left singular vector of W is below ε);
* against a second adapter: the principal angles between the two ΔW's column / row spaces and
  φ = ‖X₁ᵀX₂‖²_F / min(r₁, r₂) (Hu et al. 2021, eq. 4: the mean cos² of those angles; max(r₁, r₂)/n at
  random), and ‖ΔW₁ − ΔW₂‖_F / ‖ΔW₁‖_F from the factors.

The base is read one tensor at a time from its safetensors (a single file or a sharded
``model.safetensors.index.json``; a Hugging Face hub id is looked up in the local cache only), so a
7-billion-parameter model need not fit in memory.  Layers with min(out, in) ≤ ``full_svd_max`` use W's
full SVD in float64 (the numbers of :mod:`lora.spectra` exactly); larger ones W's top singular triplets by
randomized subspace iteration in float32 (Halko, Martinsson & Tropp 2011; ``torch.svd_lowrank``, seeded),
and the intruder test bounds the cosines with W's vectors outside that top-m subspace by the norm of what
is left, ``√(1 − ‖U_mᵀu'‖²)``, falling back to W's full SVD only for a layer the bound cannot decide.

Bad input (a missing or corrupt file, a PEFT type or LoRA variant this does not read, a base whose
tensors do not fit) raises :class:`InspectError` with one line saying what was found, before anything is
computed.  Pure torch + safetensors + numpy.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from . import spectra as sp
from .io import load_delta_factors, read_lora_config

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
FULL_SVD_MAX = 1024          # min(out, in) up to which W's SVD is the full one (float64)
INTRUDER_K = 10              # W + ΔW's top-k left singular vectors examined (Shuttleworth et al. use 10)

# LoraConfig fields that make the update something other than W + s·BA on the named weight
# (true / non-empty value → refused, with the reason).
UNSUPPORTED = {
    "use_dora": "DoRA (a magnitude vector rescales each column of W + ΔW: not a low-rank ΔW)",
    "use_qalora": "QA-LoRA (A reads pooled groups of the input)",
    "use_bdlora": "block-diagonal LoRA",
    "lora_bias": "a bias on lora_B (an update of the layer's bias as well)",
    "alora_invocation_tokens": "activated LoRA (ΔW applies only after the invocation tokens)",
    "target_parameters": "LoRA on bare parameters (e.g. MoE expert tensors)",
    "layer_replication": "replicated layers (adapters on copies that share one base weight)",
    "velora_config": "VeLoRA", "monteclora_config": "MonteCLoRA", "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
}
# Inits that change the base weights (the adapter is then relative to the residual base).
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


class InspectError(ValueError):
    """Input this module cannot read; the message is one line naming what is wrong."""

    def _render_traceback_(self):      # IPython (a notebook) shows this line instead of a traceback
        return [f"InspectError: {self}"]


@dataclass
class Layer:
    """One adapted weight: ΔW = B @ A (out×in, the scaling s folded into B), as the model applies it
    (y = (W + ΔW) x); ``transpose`` marks a base that stores W as in×out (GPT-2's Conv1D)."""
    name: str
    B: torch.Tensor
    A: torch.Tensor
    rank: int
    alpha: float | None
    scaling: float
    transpose: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.B.shape[0], self.A.shape[1]


@dataclass
class Adapter:
    path: Path
    format: str                               # "peft", "factors" or "run log"
    layers: dict[str, Layer]
    base_model: str | None = None             # the base the adapter says it was trained on
    use_rslora: bool = False
    notes: list[str] = field(default_factory=list)
    target_modules: list[str] | str | None = None     # PEFT's setting, as saved


# ------------------------------------------------------------------------------------------ reading
def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InspectError(f"{path}: not a readable safetensors file ({_one_line(e)})") from None


def _pattern_value(pattern: dict, module: str, default):
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup (peft.utils.other.get_pattern_key): the first key
    that matches the end of the module name as a regular expression, ``(.*\\.)?(key)$``."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_peft_adapter(path: str | Path) -> Adapter:
    """A PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).

    Per module, PEFT stores ``base_model.model.<module>.lora_A.weight`` (r×in) and ``.lora_B.weight``
    (out×r), or ``lora_embedding_A`` (r×num) / ``lora_embedding_B`` (dim×r) for an embedding, whose
    weight num×dim gets (B·A)ᵀ.  r and α come from ``rank_pattern`` / ``alpha_pattern`` where a key
    matches, else ``r`` / ``lora_alpha``; s = α/r (α/√r with ``use_rslora``).  ``fan_in_fan_out``
    (GPT-2's Conv1D stores W as in×out) is kept per layer for the base's orientation."""
    path = Path(path)
    cfg_path, weights = path / PEFT_CONFIG, path / PEFT_WEIGHTS
    if not cfg_path.is_file():
        raise InspectError(f"{path}: no {PEFT_CONFIG} (a PEFT adapter directory has {PEFT_CONFIG} and {PEFT_WEIGHTS})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise InspectError(f"{cfg_path}: not readable JSON ({_one_line(e)})") from None
    if not isinstance(cfg, dict):
        raise InspectError(f"{cfg_path}: not a PEFT config (a JSON object with peft_type)")
    ptype = cfg.get("peft_type")
    if ptype != "LORA":
        raise InspectError(f"{path}: peft_type {ptype!r} is not supported; lora inspect reads LoRA adapters "
                           f"(peft_type 'LORA')")
    for key, what in UNSUPPORTED.items():
        if cfg.get(key):
            raise InspectError(f"{path}: {what} ({key} = {json.dumps(cfg[key])[:80]}) is not supported; lora inspect "
                               f"reads plain LoRA (ΔW = s·BA)")
    if not weights.is_file():
        found = sorted(p.name for p in path.glob("adapter_model.*"))
        raise InspectError(f"{path}: no {PEFT_WEIGHTS}" + (f" (found {', '.join(found)}; lora inspect reads "
                                                          f"safetensors only)" if found else ""))
    factors, embedding, whole = _peft_factors(path, _safetensors(weights))
    if not factors:
        raise InspectError(f"{weights}: no LoRA factors (keys like {PEFT_PREFIX}<module>.lora_A.weight)")
    rslora = bool(cfg.get("use_rslora"))
    layers = {}
    for module in sorted(factors):
        f = factors[module]
        if set(f) != {"A", "B"}:
            raise InspectError(f"{weights}: {module} has lora_{'A' if 'A' in f else 'B'} but no "
                               f"lora_{'B' if 'A' in f else 'A'}")
        A, B = f["A"].double(), f["B"].double()
        if module in embedding:            # ΔW of the num×dim table is (B·A)ᵀ = Aᵀ·Bᵀ
            A, B = B.T, A.T
        if B.shape[1] != A.shape[0]:
            raise InspectError(f"{weights}: {module}'s factors do not multiply: B {tuple(B.shape)}, A {tuple(A.shape)}")
        k = A.shape[0]
        r = _pattern_value(cfg.get("rank_pattern"), module, cfg.get("r", k))
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", r)))
        if r != k:
            raise InspectError(f"{path}: {module} has rank {k} in {PEFT_WEIGHTS} but r = {r} in {PEFT_CONFIG}")
        s = alpha / (math.sqrt(r) if rslora else r)
        layers[module] = Layer(module, s * B, A, r, alpha, s,
                               transpose=bool(cfg.get("fan_in_fan_out")) and module not in embedding)
    adapter = Adapter(path, "peft", layers, cfg.get("base_model_name_or_path"), rslora,
                      target_modules=cfg.get("target_modules"))
    if whole:
        mods = sorted({n.rsplit(".", 1)[0] for n in whole})
        adapter.notes.append(f"it also saves {len(whole)} tensors trained whole (not low-rank; not inspected): "
                             f"{', '.join(mods[:6])}{' ...' if len(mods) > 6 else ''}")
    init = str(cfg.get("init_lora_weights", True)).lower()
    if init.startswith(BASE_CHANGING_INITS) or cfg.get("loftq_config"):
        adapter.notes.append(f"its init ({cfg.get('init_lora_weights')!r}) changed the base weights: ΔW = s·BA is "
                             f"relative to the residual base the adapter was trained on, which --base should be "
                             f"(PEFT's path_initial_model_for_weight_conversion makes one relative to the original)")
    return adapter


def _peft_factors(path: Path, tensors: dict) -> tuple[dict, set, list]:
    """({module: {"A": tensor, "B": tensor}}, the embedding modules, the names of tensors saved whole) from a
    PEFT adapter's tensors; anything that is not plain LoRA is refused in one line."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    embedding, whole = set(), []
    for key, t in tensors.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if "lora_magnitude_vector" in name:
            raise InspectError(f"{path}: DoRA magnitude vectors ({key}) are not supported; lora inspect reads "
                               f"plain LoRA (ΔW = s·BA)")
        m = re.fullmatch(r"(.+)\.lora_(A|B)\.weight", name) or re.fullmatch(r"(.+)\.lora_embedding_(A|B)", name)
        if m is None:
            if "lora_" in name:
                raise InspectError(f"{path}: tensor {key} is not a LoRA factor lora inspect reads "
                                   f"(lora_A.weight, lora_B.weight, lora_embedding_A/B)")
            whole.append(name)            # modules_to_save, trained biases: saved whole
            continue
        if t.ndim != 2:
            raise InspectError(f"{path}: {key} has shape {tuple(t.shape)}; lora inspect reads LoRA on Linear, "
                               f"Conv1D and Embedding weights (2-D factors), not convolutions")
        factors.setdefault(m[1], {})[m[2]] = t
        if "embedding" in name:
            embedding.add(m[1])
    return factors, embedding, whole


def read_factor_file(path: str | Path, fmt: str = "factors", base_model: str | None = None) -> Adapter:
    """One of this study's factor files, through :func:`lora.load_delta_factors` (ΔW relative to the
    original W, scaling folded in; residual inits as [B, −B₀]·[A; A₀])."""
    path = Path(path)
    try:
        config = read_lora_config(path)
        factors = load_delta_factors(path)
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise InspectError(f"{path}: not a readable factor file ({type(e).__name__}: {_one_line(e)})") from None
    except ValueError as e:
        raise InspectError(_one_line(e)) from None
    if not factors:
        raise InspectError(f"{path}: no adapted layers in its lora_config")
    layers = {}
    for name, (B, A) in sorted(factors.items()):
        c = config.get(name, {})
        layers[name] = Layer(name, B.double(), A.double(), int(c.get("rank", A.shape[0])),
                             c.get("alpha"), float(c.get("scaling", 1.0)))
    inits = sorted({str(c.get("init")) for c in config.values()})
    adapter = Adapter(path, fmt, layers, base_model, any(c.get("rslora") for c in config.values()))
    adapter.notes.append(f"init: {', '.join(inits)}; ΔW is relative to the original pretrained W"
                         + (" (a residual init's ΔW = s·BA − s·B₀A₀ has rank up to 2r)"
                            if any(c.get("residual") for c in config.values()) else ""))
    kept = [float(c["energy_kept"]) for c in config.values() if c.get("energy_kept") is not None]
    if kept:                       # harness: a full fine-tuning update stored as its top singular directions
        adapter.notes.append(f"a dense update stored as its top-{max(l.rank for l in layers.values())} singular "
                             f"directions, which hold {100 * min(kept):.0f}–{100 * max(kept):.0f} % of its ‖ΔW‖²_F: "
                             f"the numbers here are those of the truncation")
    return adapter


def read_adapter(path: str | Path) -> Adapter:
    """Any adapter this module reads, by what ``path`` is: a PEFT adapter directory (or its
    ``adapter_model.safetensors``), a run log ``logs/<grid>/<run>.json`` (its factor file lies beside it)
    or a factor file ``.safetensors``."""
    path = Path(path)
    if not path.exists():
        raise InspectError(f"{path}: no such file or directory (give a PEFT adapter directory, a run log .json "
                           f"or a factor file .safetensors)")
    if path.is_dir():
        return read_peft_adapter(path)
    if path.name == PEFT_WEIGHTS and (path.parent / PEFT_CONFIG).is_file():
        return read_peft_adapter(path.parent)
    if path.name == PEFT_CONFIG:
        return read_peft_adapter(path.parent)
    if path.suffix == ".json":
        try:
            log = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InspectError(f"{path}: not readable JSON ({_one_line(e)})") from None
        if not isinstance(log, dict) or "run_id" not in log:
            raise InspectError(f"{path}: not a run log (a JSON object with run_id and factors_file)")
        if not log.get("factors_file"):
            raise InspectError(f"{path}: run {log['run_id']} saved no factor file (factors_file is empty)")
        factors = path.parent / log["factors_file"]
        if not factors.is_file():
            raise InspectError(f"{path}: its factor file {factors} is missing")
        return read_factor_file(factors, "run log", (log.get("config") or {}).get("model"))
    if path.suffix == ".safetensors":
        return read_factor_file(path)
    raise InspectError(f"{path}: not an adapter (give a PEFT adapter directory, a run log .json or a factor "
                       f"file .safetensors)")


# ------------------------------------------------------------------------------------------ the base
class BaseWeights:
    """A model's weights in safetensors, read one tensor at a time.

    ``source``: a directory with ``model.safetensors.index.json`` (sharded: its ``weight_map`` names each
    tensor's file), ``model.safetensors`` or other ``*.safetensors`` files; one ``.safetensors`` file; or a
    Hugging Face hub id found in the local cache (``huggingface_hub.snapshot_download(...,
    local_files_only=True)``: nothing is downloaded).  Each read opens the file, copies the one tensor out
    and closes it, so no more than one weight is held (the mapping of a 4 GB shard is not kept)."""

    def __init__(self, source: str | Path):
        self.source = str(source)
        self.root = self._locate(self.source)
        self.files = self._index(self.root)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.prefixes = sorted({k.split(".", 1)[0] + "." for k in self.files if "." in k})

    @staticmethod
    def _locate(source: str) -> Path:
        path = Path(source).expanduser()
        if path.exists():
            return path
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source) and not source.startswith((".", "/")):
            try:
                from huggingface_hub import snapshot_download
                return Path(snapshot_download(source, local_files_only=True,
                                              allow_patterns=["*.safetensors", "*.json"]))
            except Exception as e:                               # not cached, offline, bad id: one line
                raise InspectError(f"base {source!r} is not a path here nor a model in the Hugging Face cache "
                                   f"({type(e).__name__}); download it first (hf download {source}) or give "
                                   f"its directory") from None
        raise InspectError(f"base {source!r}: no such file or directory")

    @staticmethod
    def _index(root: Path) -> dict[str, Path]:
        if root.is_file():
            files = [root] if root.suffix == ".safetensors" else []
            if not files:
                raise InspectError(f"base {root}: not a .safetensors file (give the model's directory)")
        else:
            index = root / "model.safetensors.index.json"
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise InspectError(f"{index}: not a safetensors index with a weight_map ({_one_line(e)})") from None
                return {k: root / v for k, v in weight_map.items()}
            files = [root / "model.safetensors"] if (root / "model.safetensors").is_file() else \
                sorted(p for p in root.glob("*.safetensors") if p.name != PEFT_WEIGHTS)
            if not files:
                other = sorted(p.name for p in root.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".h5", ".msgpack"))
                raise InspectError(f"base {root}: no safetensors weights" + (
                    f" (found {', '.join(other[:3])}; lora inspect reads safetensors only)" if other else ""))
        out = {}
        for f in files:
            try:
                with safe_open(str(f), "pt") as h:
                    out.update({k: f for k in h.keys()})
            except (SafetensorError, OSError) as e:
                raise InspectError(f"base {f}: not a readable safetensors file ({_one_line(e)})") from None
        return out

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self._shapes:
            f = self.files[key]
            try:
                with safe_open(str(f), "pt") as h:
                    for k in h.keys():
                        if self.files.get(k) == f:
                            self._shapes[k] = tuple(h.get_slice(k).get_shape())
            except (SafetensorError, OSError) as e:
                raise InspectError(f"base {f}: not a readable safetensors file ({_one_line(e)})") from None
            if key not in self._shapes:
                raise InspectError(f"base {self.root}: the index puts {key} in {f.name}, which does not hold it")
        return self._shapes[key]

    def tensor(self, key: str) -> torch.Tensor:
        try:
            with safe_open(str(self.files[key]), "pt") as h:
                return h.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise InspectError(f"base {self.files[key]}: could not read {key} ({_one_line(e)})") from None

    def key_for(self, module: str) -> str | None:
        """The tensor of a module named as in the adapter: ``<module>.weight`` as it is, under one of the
        checkpoint's top-level prefixes (``bert.``, ``model.``) or without the module's own first component
        (a task model's adapter on a checkpoint of the bare encoder)."""
        stems = [module, *(p + module for p in self.prefixes)]
        if "." in module:
            stems.append(module.split(".", 1)[1])
        for stem in stems:
            for key in (stem + ".weight", stem):
                if key in self.files:
                    return key
        return None


def match_base(adapter: Adapter, base: BaseWeights) -> dict[str, str]:
    """{layer: base tensor key}, after checking that every layer's W is there and fits ΔW (out×in, or
    in×out for a Conv1D stored transposed, which sets ``layer.transpose``)."""
    keys = {}
    for name, layer in adapter.layers.items():
        key = base.key_for(name)
        if key is None:
            raise InspectError(f"base {base.source}: no tensor for the adapter's layer {name} (tried {name}.weight, "
                               f"with the prefixes {', '.join(base.prefixes[:4]) or '-'} and without its first "
                               f"component)")
        shape, (out, inn) = base.shape(key), layer.shape
        if shape == (out, inn) and (shape != (inn, out) or not layer.transpose):
            layer.transpose = False
        elif shape == (inn, out):
            layer.transpose = True          # Conv1D: PEFT sets fan_in_fan_out for these whatever the config said
        else:
            raise InspectError(f"base {base.source}: {key} has shape {tuple(shape)} but the adapter's layer {name} "
                               f"needs {out}×{inn} (ΔW = B·A: B {tuple(layer.B.shape)}, A {tuple(layer.A.shape)})")
        keys[name] = key
    return keys


def base_weight(base: BaseWeights, key: str, layer: Layer, dtype=torch.float64) -> torch.Tensor:
    W = base.tensor(key)
    return (W.T if layer.transpose else W).to(dtype)


# ------------------------------------------------------------------------------------- the numbers
def top_singular(M: torch.Tensor, k: int, n_iter: int = 4, oversample: int = 10, seed: int = 0):
    """W's top-k singular triplets (U out×k, S, V in×k) by randomized subspace iteration in M's dtype
    (``torch.svd_lowrank``: q = k + oversample Gaussian columns, ``n_iter`` power iterations with QR in
    between; Halko et al. 2011, alg. 4.4), with a fixed seed.  The error in the span of U_k falls like
    (σ_{q+1}/σ_k)^(2·n_iter+1); tests check it against the full SVD."""
    q = min(k + oversample, *M.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        U, S, V = torch.svd_lowrank(M, q=q, niter=n_iter)
    return U[:, :k], S[:k], V[:, :k]


def spectrum_row(layer: Layer, energy_k: int = 1) -> dict:
    """ΔW's spectrum and its scalar summaries (:func:`lora.spectra.spectrum_metrics`)."""
    S = sp.singular_values(layer.B, layer.A)
    m = sp.spectrum_metrics(S, energy_k)
    return dict(num_rank=m["rank"], fro=m["fro"], spectral=m["spectral"], stable_rank=m["stable_rank"],
                effective_rank=m["effective_rank"], energy_top1=sp.energy_fraction(S, 1), energy_topk=m["energy"],
                sv=S.tolist())


def _intruders_bounded(W_ft32: torch.Tensor, Um: torch.Tensor, k: int, eps) -> dict | None:
    """The intruder test on the top-k left singular vectors u'_j of W + ΔW knowing only W's top-m left
    singular vectors U_m: max_i |⟨u'_j, u_i⟩| ≥ ℓ_j = max |U_mᵀu'_j| and every cosine outside U_m is at most
    t_j = √(1 − ‖U_mᵀu'_j‖²), so max_cos_j = ℓ_j when ℓ_j ≥ t_j and lies in [ℓ_j, t_j] otherwise.  The count at
    ε is decided when no interval straddles ε; None when one does (the caller takes W's full SVD)."""
    U1, S1, _ = top_singular(W_ft32, k)
    C = U1.double().T @ Um.double()
    low = C.abs().amax(1).clamp(max=1.0)
    high = torch.maximum(low, (1 - (C ** 2).sum(1)).clamp_min(0).sqrt())
    if any(bool(((low < e) & (high >= e)).any()) for e in eps):
        return None
    return dict(k=k, eps=list(eps), counts=[int((high < e).sum()) for e in eps], max_cos=low.tolist(),
                max_cos_upper=high.tolist(), sv_ft=S1.double().tolist(), method=f"bounded by W's top-{Um.shape[1]}")


def base_row(layer: Layer, W: torch.Tensor, w_top: int | None = None, intruder_k: int = INTRUDER_K,
             eps=sp.INTRUDER_EPS, intruders: bool = True, full_svd_max: int = FULL_SVD_MAX) -> dict:
    """ΔW against the base weight W (out×in, as the model applies it).

    r = min(adapter rank, numerical rank of ΔW) directions of ΔW against W's top-k (k = ``w_top``, default
    the adapter rank r): ``angles_left`` / ``angles_right`` (degrees, ascending; those of
    :func:`lora.spectra.subspace_overlap_with_W`), ``overlap_left`` / ``overlap_right`` = mean cos² of them
    (``overlap_random_*`` = max(r, k)/n), ``energy_in_w_left`` = ‖U_kᵀΔW‖²_F/‖ΔW‖²_F, ``energy_in_w_right`` =
    ‖ΔW V_k‖²_F/‖ΔW‖²_F (k/n at random), ``amplification`` (:func:`lora.spectra.amplification_factor`),
    ``rel_fro`` = ‖ΔW‖_F/‖W‖_F, ``rel_spectral`` = ‖ΔW‖₂/‖W‖₂, and ``intruders``
    (:func:`lora.spectra.intruder_dimensions` of W + ΔW at ``intruder_k`` and ``eps``, plus how it was found).
    """
    out_f, in_f = W.shape
    U, S, V = sp.lowrank_svd(layer.B, layer.A)
    r = min(layer.rank, sp.numerical_rank(S))
    k = min(w_top or layer.rank, out_f, in_f)
    kk = min(intruder_k, out_f, in_f)
    exact = min(out_f, in_f) <= full_svd_max
    W64 = W.to(torch.float64)
    if exact:
        Uw, Sw, Vhw = torch.linalg.svd(W64, full_matrices=False)
        Vw, w_spectral, w_fro = Vhw.mT, float(Sw[0]), float(torch.linalg.vector_norm(Sw))
    else:
        W32 = W.to(torch.float32)
        m = max(k, 2 * kk)
        Uw, Sw, Vw = (t.double() for t in top_singular(W32, m))
        w_spectral, w_fro = float(Sw[0]), float(torch.linalg.matrix_norm(W32))
    Uk, Vk = Uw[:, :k], Vw[:, :k]
    fro = sp.frobenius_norm(S)
    row = dict(w_top=k, r=r, w_fro=w_fro, w_spectral=w_spectral, rel_fro=fro / w_fro if w_fro else math.nan,
               rel_spectral=sp.spectral_norm(S) / w_spectral if w_spectral else math.nan,
               overlap_random_left=sp.random_subspace_similarity_baseline(out_f, r, k) if r else math.nan,
               overlap_random_right=sp.random_subspace_similarity_baseline(in_f, r, k) if r else math.nan,
               energy_random_left=k / out_f, energy_random_right=k / in_f, svd="full" if exact else "randomized")
    if r == 0:                               # ΔW = 0: no subspace to compare
        row.update(overlap_left=math.nan, overlap_right=math.nan, energy_in_w_left=math.nan,
                   energy_in_w_right=math.nan, angles_left=[], angles_right=[], amplification=0.0)
    else:
        aL, aR = sp.principal_angles(U[:, :r], Uk), sp.principal_angles(V[:, :r], Vk)
        US, VS = U * S, V * S                # ΔW = (U S) Vᵀ: ‖U_kᵀΔW‖_F = ‖U_kᵀ U S‖_F, ‖ΔW V_k‖_F = ‖V_kᵀ V S‖_F
        row.update(overlap_left=float((aL.cos() ** 2).mean()), overlap_right=float((aR.cos() ** 2).mean()),
                   energy_in_w_left=float((Uk.T @ US).square().sum()) / fro ** 2,
                   energy_in_w_right=float((Vk.T @ VS).square().sum()) / fro ** 2,
                   angles_left=torch.rad2deg(aL).tolist(), angles_right=torch.rad2deg(aR).tolist(),
                   amplification=sp.amplification_factor(layer.B, layer.A, W64, r=r))
    if intruders:
        found = None
        if not exact:
            W_ft32 = W32 + layer.B.float() @ layer.A.float()
            found = _intruders_bounded(W_ft32, Uw, kk, eps)
            del W_ft32
        if found is None:
            if exact:
                basis = Uw
            else:
                basis = torch.linalg.svd(W64, full_matrices=False)[0]
            d = sp.intruder_dimensions(W64, W64 + layer.B @ layer.A, k=kk, eps=list(eps), basis0=basis)
            found = dict(k=kk, eps=d["eps"], counts=d["counts"], max_cos=d["max_cos"].tolist(),
                         sv_ft=d["sv_ft"].tolist(), method="full SVD of W" + ("" if exact else " (bound undecided)"))
        row["intruders"] = found
    return row


def compare_row(l1: Layer, l2: Layer) -> dict:
    """Two adapters' ΔW on the same weight: principal angles (degrees, ascending) between their column
    spaces (``angles_left``) and row spaces (``angles_right``), each of its numerical rank; φ at full rank
    (mean cos² of those angles: :func:`lora.spectra.normalized_subspace_similarity`'s last entry) and
    φ(1, 1) (the top directions' cos²) on each side, the random baseline max(r₁, r₂)/n and
    ‖ΔW₁ − ΔW₂‖_F / ‖ΔW₁‖_F (:func:`lora.spectra.lowrank_distance`)."""
    if l1.shape != l2.shape:
        raise InspectError(f"layer {l1.name}: ΔW is {l1.shape[0]}×{l1.shape[1]} in one adapter and "
                           f"{l2.shape[0]}×{l2.shape[1]} in the other")
    row = {}
    for side, n in (("left", l1.shape[0]), ("right", l1.shape[1])):
        X1 = sp.singular_directions(l1.B, l1.A, of="dW", side=side)
        X2 = sp.singular_directions(l2.B, l2.A, of="dW", side=side)
        if X1.shape[1] == 0 or X2.shape[1] == 0:
            row.update({f"phi_{side}": math.nan, f"phi1_{side}": math.nan, f"angles_{side}": [],
                        f"phi_random_{side}": math.nan})
            continue
        G = sp.normalized_subspace_similarity((l1.B, l1.A), (l2.B, l2.A), of="dW", side=side)
        row.update({f"phi_{side}": float(G[-1, -1]), f"phi1_{side}": float(G[0, 0]),
                    f"angles_{side}": torch.rad2deg(sp.principal_angles(X1, X2)).tolist(),
                    f"phi_random_{side}": sp.random_subspace_similarity_baseline(n, X1.shape[1], X2.shape[1])})
    norm1 = sp.frobenius_norm(sp.singular_values(l1.B, l1.A))
    dist = sp.lowrank_distance(l1.B, l1.A, l2.B, l2.A)
    row["rel_distance"] = dist / norm1 if norm1 else math.nan
    return row


def _pair_layers(a: Adapter, b: Adapter) -> dict[str, str]:
    """{layer of a: layer of b}: the same name, else the same name without the first component."""
    def strip(n):
        return n.split(".", 1)[1] if "." in n else n
    by_strip = {strip(n): n for n in b.layers}
    pairs = {n: n if n in b.layers else by_strip.get(strip(n)) for n in a.layers}
    pairs = {k: v for k, v in pairs.items() if v is not None}
    if not pairs:
        raise InspectError(f"{b.path} shares no adapted layer with {a.path} (e.g. {next(iter(a.layers))} vs "
                           f"{next(iter(b.layers))})")
    return pairs


def block_index(name: str) -> int | None:
    """The first integer component of a layer name (``bert.encoder.layer.3.attention.self.value`` → 3)."""
    return next((int(p) for p in name.split(".") if p.isdigit()), None)


def module_kinds(names) -> dict[str, str]:
    """{layer: module kind}: the shortest tail of the name that no other layer of the same block shares
    (``value``; GPT-2's ``attn.c_proj`` and ``mlp.c_proj`` keep two components)."""
    names = list(names)
    out = {}
    for name in names:
        parts = name.split(".")
        same_block = [n.split(".") for n in names if n != name and block_index(n) == block_index(name)]
        j = 1
        while j < len(parts) and any(o[-j:] == parts[-j:] for o in same_block):
            j += 1
        out[name] = ".".join(parts[-j:])
    return out


def inspect_adapter(adapter, base=None, compare=None, *, energy_k: int = 1, w_top: int | None = None,
                    intruder_k: int = INTRUDER_K, eps=sp.INTRUDER_EPS, intruders: bool = True,
                    full_svd_max: int = FULL_SVD_MAX, progress=None) -> dict:
    """Everything above for one adapter (a path or an :class:`Adapter`), optionally against its base
    (a directory, a safetensors file, a cached hub id or a :class:`BaseWeights`) and a second adapter.

    All input is read and checked (every layer's base tensor found and of the right shape) before any
    number is computed.  Returns a JSON-ready dict: ``adapter`` (what was read), ``base``, ``options``,
    ``layers`` (one row per layer: :func:`spectrum_row`, then :func:`base_row`'s and
    :func:`compare_row`'s fields prefixed ``cmp_``) and ``modules`` (per module kind: medians / means;
    see :func:`summarize`).  ``progress``: called with (i, n, layer) before each layer."""
    if energy_k < 1 or intruder_k < 1 or (w_top is not None and w_top < 1):
        raise InspectError(f"energy_k, intruder_k and w_top must be positive integers, got {energy_k}, "
                           f"{intruder_k}, {w_top}")
    eps = [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps])]
    if not eps or any(not 0 < e <= 1 for e in eps):
        raise InspectError(f"eps must be numbers in (0, 1], got {eps}")
    ad = adapter if isinstance(adapter, Adapter) else read_adapter(adapter)
    other = None if compare is None else (compare if isinstance(compare, Adapter) else read_adapter(compare))
    bw = None if base is None else (base if isinstance(base, BaseWeights) else BaseWeights(base))
    keys = match_base(ad, bw) if bw is not None else {}
    pairs = _pair_layers(ad, other) if other is not None else {}
    for a, b in pairs.items():
        if ad.layers[a].shape != other.layers[b].shape:
            raise InspectError(f"{other.path}: layer {b} is {other.layers[b].shape[0]}×{other.layers[b].shape[1]} "
                               f"but {a} of {ad.path} is {ad.layers[a].shape[0]}×{ad.layers[a].shape[1]}")
    rows, kinds = [], module_kinds(ad.layers)
    names = sorted(ad.layers, key=lambda n: (block_index(n) is None, block_index(n) or 0, n))
    for i, name in enumerate(names):
        if progress:
            progress(i, len(names), name)
        layer = ad.layers[name]
        row = dict(layer=name, block=block_index(name), module=kinds[name], out=layer.shape[0], **{"in": layer.shape[1]},
                   rank=layer.rank, alpha=layer.alpha, scaling=layer.scaling, **spectrum_row(layer, energy_k))
        if bw is not None:
            W = base_weight(bw, keys[name], layer, torch.float32 if min(layer.shape) > full_svd_max else torch.float64)
            row.update(base_tensor=keys[name], **base_row(layer, W, w_top, intruder_k, eps, intruders, full_svd_max))
            del W
        if name in pairs:
            row.update(cmp_layer=pairs[name], **{f"cmp_{k}": v for k, v in compare_row(layer, other.layers[pairs[name]]).items()})
        rows.append(row)
    result = dict(
        adapter=_adapter_info(ad),
        base=None if bw is None else dict(source=bw.source, path=str(bw.root), tensors=len(bw.files)),
        compare=None if other is None else dict(**_adapter_info(other), layers_compared=len(pairs)),
        options=dict(energy_k=energy_k, w_top=w_top, intruder_k=intruder_k, eps=eps, intruders=intruders and bw is not None,
                     full_svd_max=full_svd_max),
        layers=rows)
    result["modules"] = summarize(rows, eps)
    return result


def _adapter_info(ad: Adapter) -> dict:
    ranks = sorted({l.rank for l in ad.layers.values()})
    alphas = sorted({l.alpha for l in ad.layers.values() if l.alpha is not None})
    scalings = sorted({round(l.scaling, 12) for l in ad.layers.values()})
    kinds = {}
    for kind in module_kinds(ad.layers).values():
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(path=str(ad.path), format=ad.format, base_model=ad.base_model, layers=len(ad.layers),
                modules=kinds, ranks=ranks, alphas=alphas, scalings=scalings, use_rslora=ad.use_rslora,
                target_modules=ad.target_modules, notes=list(ad.notes))


def _median(xs):
    xs = sorted(x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x)))
    if not xs:
        return math.nan
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _mean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else math.nan


def summarize(rows: list[dict], eps=sp.INTRUDER_EPS) -> dict:
    """Per module kind (and ``"all"``): layer count, medians of the rank and size numbers, means of the
    overlaps and energies (with their random baselines), the median amplification, and the layers with
    at least one intruder at each ε."""
    groups = {}
    for row in rows:
        groups.setdefault(row["module"], []).append(row)
    if len(groups) > 1:
        groups["all"] = rows
    out = {}
    for kind, rs in groups.items():
        s = dict(layers=len(rs), num_rank=_median([r["num_rank"] for r in rs]),
                 effective_rank=_median([r["effective_rank"] for r in rs]),
                 stable_rank=_median([r["stable_rank"] for r in rs]),
                 energy_top1=_median([r["energy_top1"] for r in rs]),
                 energy_topk=_median([r["energy_topk"] for r in rs]), fro=_median([r["fro"] for r in rs]))
        if "w_top" in rs[0]:
            for key in ("overlap_left", "overlap_right", "overlap_random_left", "overlap_random_right",
                        "energy_in_w_left", "energy_in_w_right", "energy_random_left", "energy_random_right"):
                s[key] = _mean([r[key] for r in rs])
            s.update(amplification=_median([r["amplification"] for r in rs]), rel_fro=_median([r["rel_fro"] for r in rs]),
                     w_top=sorted({r["w_top"] for r in rs}))
            if "intruders" in rs[0]:
                s["intruder_layers"] = {str(e): sum(1 for r in rs if r["intruders"]["counts"][i] > 0)
                                        for i, e in enumerate(eps)}
                s["intruders_total"] = {str(e): sum(r["intruders"]["counts"][i] for r in rs) for i, e in enumerate(eps)}
        if "cmp_phi_right" in rs[0]:
            for key in ("cmp_phi_left", "cmp_phi_right", "cmp_phi1_left", "cmp_phi1_right", "cmp_phi_random_left",
                        "cmp_phi_random_right"):
                s[key] = _mean([r.get(key) for r in rs])
            s["cmp_rel_distance"] = _median([r.get("cmp_rel_distance") for r in rs])
        out[kind] = s
    return out
