"""Chapter 17 — the judge: an attribute classifier that says what a picture of a scene shows.

The illustrator draws a picture from a caption; to grade it we need something that reads the picture back. This
is a small convolutional network trained only on the scene generator's real pictures (`storylib.scenes`) to predict
every attribute a caption states: the thing, its colour, how many, where, in what relation to which other thing,
the time of day and the weather. A generated picture "matches its caption" when the judge reads back every one of
them. The judge's penultimate layer also gives the features of a Fréchet distance (FID, Heusel et al. 2017) between
real and generated pictures.

    data = judge_dataset(5000, seed=0, size=64)     # real scenes, a quarter of them from the held-out split
    model, log = train_classifier(data["pictures"], data["attributes"], steps=2000, device="cuda")
    predict(model, pictures)                        # [{"thing": "cat", "colour": "red", ...}, ...]
    caption_accuracy(model, pictures, attributes)   # {"all": share, "per_attribute": {key: share}, "n": N}
    frechet_distance(picture_features(model, real), picture_features(model, fake))
    save_classifier(model, "models/illustrator/classifier");  load_classifier("models/illustrator/classifier")

In the order of the file:

    HEADS, encode_labels, decode_labels   the attributes as class indices (None is a class where one can be absent)
    judge_dataset                         real scenes of both splits: the judge must know the held-out pairs too
    AttributeClassifier                   4 conv stages -> a feature vector -> one linear head per attribute
    train_classifier                      summed cross-entropy of the heads, AdamW, warm-up + cosine schedule
    predict, caption_match, caption_accuracy   reading pictures back and grading them against captions
    frechet_distance, picture_features    ||mu_a - mu_b||² + tr(Sa + Sb - 2 (Sa^½ Sb Sa^½)^½)
    save_classifier, load_classifier      classifier.safetensors + classifier.json
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from storylib import scenes
from storylib.mlp import warmup_cosine_lr
from storylib.optim import AdamW, param_groups, update
from storylib.vqvae import to_tensor  # the same pictures -> tensors as the VQ-VAE

# ----------------------------------------------------------------------------- the labels

# attribute -> its classes, in the order of scenes.attributes(). None is a class where the attribute can be absent:
# the colour of the sun or a tree (they keep their own colours), the place of a two-thing scene, the relation and the
# other thing of a one-thing scene. "sunny" is the weather with neither rain nor snow.
HEADS: dict[str, tuple] = {
    "thing": scenes.THINGS,
    "colour": (None, *scenes.COLOURS),
    "count": tuple(sorted(scenes.NUMBERS)),
    "place": (None, *scenes.PLACES),
    "relation": (None, *scenes.RELATIONS),
    "other": (None, *(k for k in scenes.THINGS if k in scenes.SUPPORTS)),
    "other_colour": (None, *scenes.COLOURS),
    "time": scenes.TIMES,
    "weather": scenes.WEATHER,
}
# every attribute a caption states that scenes.attributes() labels (not the sizes)
CAPTION_KEYS = tuple(HEADS)
FORMAT = "llm101n-scene-classifier/1"


def encode_labels(attributes: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Attribute dicts (as scenes.attributes gives them) -> {key: int64 tensor (N,)} of class indices into HEADS[key].

    Raises ValueError naming the key and the value when a dict lacks a key of HEADS or holds a value that is not
    one of its classes.
    """
    out = {}
    for key, classes in HEADS.items():
        index = {c: i for i, c in enumerate(classes)}
        ids = []
        for a in attributes:
            if key not in a or a[key] not in index:
                raise ValueError(f"{key} = {a.get(key, '<missing>')!r} is not one of {classes}")
            ids.append(index[a[key]])
        out[key] = torch.tensor(ids, dtype=torch.int64)
    return out


def decode_labels(labels: dict[str, torch.Tensor]) -> list[dict]:
    """The inverse of encode_labels: {key: class indices (N,)} -> N attribute dicts with HEADS' keys, in its order.

    The values are the classes of HEADS (str, int or None); decode_labels(encode_labels(a)) == a.
    """
    n = len(next(iter(labels.values())))
    columns = {key: [HEADS[key][i] for i in labels[key].tolist()] for key in HEADS}
    return [{key: columns[key][j] for key in HEADS} for j in range(n)]


def judge_dataset(n: int, seed: int = 0, size: int = 64, heldout_share: float = 0.25) -> dict:
    """n real scenes to train the judge on: round(n * heldout_share) from the "heldout" split, the rest from
    "train", shuffled together; the keys of scenes.make_dataset. The judge must know what a blue dog looks like:
    trained on the train split alone it reads a (correctly drawn) blue dog as a cat, and fails the generator that
    composes well. Only the generator must never see the held-out pairs; evaluate on other seeds than `seed`.
    """
    if not 0 <= heldout_share <= 1:
        raise ValueError(f"heldout_share must be in [0, 1], got {heldout_share}")
    n_held = round(n * heldout_share)
    parts = [scenes.make_dataset(n - n_held, seed, "train", size), scenes.make_dataset(n_held, seed, "heldout", size)]
    order = np.random.default_rng(seed).permutation(n)
    out = {"pictures": np.concatenate([p["pictures"] for p in parts])[order]}
    for key in ("captions", "specs", "attributes"):
        joined = parts[0][key] + parts[1][key]
        out[key] = [joined[i] for i in order]
    return out


# ----------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class ClassifierConfig:
    width: int = 32  # channels of the first stage; each later stage doubles them
    depth: int = 2  # 3x3 convolutions per stage
    n_features: int = 256  # the feature vector: the heads' input and the Fréchet distance's space
    grid: int = 4  # the last stage is pooled to grid x grid and flattened: where things are is a label


def _stage(c_in: int, c_out: int, depth: int) -> nn.Sequential:
    """depth x (3x3 conv, BatchNorm, ReLU), then 2x2 max pooling: half the resolution."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class AttributeClassifier(nn.Module):
    """A VGG-style CNN (Simonyan & Zisserman 2015) with one linear head per attribute of HEADS.

    Input: float (B, 3, H, W) in [-1, 1], H and W at least 16 (64 in the course). Four stages of 3x3 convolutions
    (width, 2 width, 4 width, 8 width channels), each halving the resolution; the last is average-pooled to a
    grid x grid map and flattened (global pooling would forget *where* things are), then a linear layer + ReLU
    gives the features (B, n_features).
    """

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = cfg = config or ClassifierConfig()
        if min(cfg.width, cfg.depth, cfg.n_features, cfg.grid) < 1:
            raise ValueError(f"every field of the config must be >= 1, got {cfg}")
        widths = [3] + [cfg.width * 2**i for i in range(4)]
        self.stages = nn.Sequential(*(_stage(a, b, cfg.depth) for a, b in zip(widths, widths[1:], strict=False)))
        self.pool = nn.AdaptiveAvgPool2d(cfg.grid)
        self.fc = nn.Linear(widths[-1] * cfg.grid**2, cfg.n_features)
        self.heads = nn.ModuleDict({key: nn.Linear(cfg.n_features, len(c)) for key, c in HEADS.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, n_features), the penultimate layer."""
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[2:]) < 16:
            raise ValueError(f"x must be (B, 3, H, W) with H, W >= 16, got {tuple(x.shape)}")
        return F.relu(self.fc(self.pool(self.stages(x)).flatten(1)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) -> {key: logits (B, len(HEADS[key]))}."""
        h = self.features(x)
        return {key: head(h) for key, head in self.heads.items()}


def heads_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum over the heads of the mean cross-entropy of each: one scalar. Each attribute counts the same."""
    return sum(F.cross_entropy(logits[key].float(), labels[key]) for key in HEADS)


# ----------------------------------------------------------------------------- training


def augment(x: torch.Tensor, generator: torch.Generator | None = None, brightness: float = 0.08,
            noise: float = 0.03) -> torch.Tensor:
    """Changes that cannot change a label: each picture's brightness scaled by a factor in 1 ± brightness (the
    same for all three channels, so no hue moves: colour is a label), plus Gaussian pixel noise of std `noise`.
    No flips (left and right are labels), no crops (so are top and bottom). x: (B, 3, H, W) in [-1, 1]."""
    b = 1 + brightness * (2 * torch.rand(len(x), 1, 1, 1, generator=generator, device=x.device) - 1)
    z = torch.randn(x.shape, generator=generator, device=x.device)
    return (((x + 1) * b - 1) + noise * z).clamp(-1, 1)


def train_classifier(
    pictures: np.ndarray,
    attributes: Sequence[dict],
    steps: int = 2000,
    batch_size: int = 128,
    lr: float = 2e-3,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    config: ClassifierConfig | None = None,
    weight_decay: float = 0.05,
    warmup: int = 100,
) -> tuple[AttributeClassifier, dict]:
    """Train an AttributeClassifier on uint8 pictures (N, H, W, 3) and their scenes.attributes() dicts.

    Random batches (with replacement) of augmented pictures; the loss is heads_loss; AdamW (storylib.optim) with
    weight decay on the matrices only, the learning rate warmup_cosine_lr(step, steps, lr, warmup, lr / 20),
    gradients clipped to norm 1. On a CUDA device the forward pass runs under bf16 autocast. Returns the model (in
    eval mode, on `device`) and a log {"loss": [per step], "lr": [per step]}.
    """
    if len(pictures) != len(attributes) or len(pictures) == 0:
        raise ValueError(f"need as many attribute dicts as pictures (> 0), got {len(attributes)} and {len(pictures)}")
    device = torch.device(device)
    torch.manual_seed(seed)  # the initial weights
    gen = torch.Generator(device=device).manual_seed(seed)
    x_all = torch.as_tensor(np.asarray(pictures)).to(device)  # stays uint8: 4x smaller than floats
    y_all = {k: v.to(device) for k, v in encode_labels(attributes).items()}
    model = AttributeClassifier(config).to(device).train()
    opt = AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    from tqdm.auto import tqdm

    log: dict[str, list[float]] = {"loss": [], "lr": []}
    bar = tqdm(range(steps), desc="classifier", disable=not progress)
    for step in bar:
        lr_now = warmup_cosine_lr(step, steps, lr, warmup, lr / 20)
        idx = torch.randint(0, len(x_all), (batch_size,), generator=gen, device=device)
        x = augment(to_tensor(x_all[idx]), gen)
        with amp:
            loss = heads_loss(model(x), {k: v[idx] for k, v in y_all.items()})
        update(opt, loss, lr_now, 1.0)
        log["loss"].append(loss.item())
        log["lr"].append(lr_now)
        bar.set_postfix(loss=f"{log['loss'][-1]:.3f}", refresh=False)
    return model.eval(), log


# ----------------------------------------------------------------------------- reading pictures back


@torch.no_grad()
def _batched(model: AttributeClassifier, pictures: np.ndarray, batch_size: int, fn) -> list:
    """fn(model, x) on the pictures in batches, in eval mode, on the model's device."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    return [fn(model, to_tensor(pictures[i:i + batch_size]).to(device)) for i in range(0, len(pictures), batch_size)]


def predict(model: AttributeClassifier, pictures: np.ndarray, batch_size: int = 256) -> list[dict]:
    """uint8 pictures (N, H, W, 3) -> N attribute dicts (the keys of scenes.attributes), each head's argmax."""
    parts = _batched(model, pictures, batch_size, lambda m, x: {k: v.argmax(-1).cpu() for k, v in m(x).items()})
    if not parts:
        return []
    return decode_labels({key: torch.cat([p[key] for p in parts]) for key in HEADS})


def caption_match(pred: dict, attrs: dict, keys: Sequence[str] = CAPTION_KEYS) -> bool:
    """True when the predicted attributes equal the caption's on every key of `keys` (a missing key never matches)."""
    return all(key in pred and key in attrs and pred[key] == attrs[key] for key in keys)


def caption_accuracy(model: AttributeClassifier, pictures: np.ndarray, attributes: Sequence[dict],
                     batch_size: int = 256) -> dict:
    """How well the pictures show their captions, as the judge reads them:
    {"all": share of pictures whose every CAPTION_KEYS attribute matches, "per_attribute": {key: share matching},
    "n": N}. Raises ValueError when the counts differ or there are no pictures."""
    if len(pictures) != len(attributes) or len(pictures) == 0:
        raise ValueError(f"need as many attribute dicts as pictures (> 0), got {len(attributes)} and {len(pictures)}")
    preds = predict(model, pictures, batch_size)
    n = len(preds)
    per = {key: sum(p[key] == a[key] for p, a in zip(preds, attributes, strict=True)) / n for key in CAPTION_KEYS}
    every = sum(caption_match(p, a) for p, a in zip(preds, attributes, strict=True)) / n
    return {"all": every, "per_attribute": per, "n": n}


# ----------------------------------------------------------------------------- Fréchet distance


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix, via eigh; tiny negative eigenvalues -> 0."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(feats_a: np.ndarray | torch.Tensor, feats_b: np.ndarray | torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features (Heusel et al. 2017, FID):

        ||mu_a - mu_b||² + tr(Sa + Sb - 2 (Sa^½ Sb Sa^½)^½)

    with mu the means and S the sample covariances (ddof 1) of feats_a (N, F) and feats_b (M, F), N, M >= 2,
    all in float64. (Sa^½ Sb Sa^½)^½ has the trace of (Sa Sb)^½ but is symmetric, so numpy's eigh is enough.
    Raises ValueError on shapes that differ or are not 2-D, fewer than 2 rows, or non-finite values.
    """
    a, b = (f.detach().double().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, dtype=np.float64)
            for f in (feats_a, feats_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N, F) feature sets with the same F and N >= 2, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features must be finite")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrtm_psd(s_a)
    middle = root_a @ s_b @ root_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


def picture_features(model: AttributeClassifier, pictures: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 pictures (N, H, W, 3) -> float64 features (N, n_features): the classifier's penultimate layer."""
    parts = _batched(model, pictures, batch_size, lambda m, x: m.features(x).double().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.config.n_features))


# ----------------------------------------------------------------------------- on disk


def save_classifier(model: AttributeClassifier, folder: str | Path) -> Path:
    """Write `folder`/classifier.safetensors (the weights, fp32) and `folder`/classifier.json (format, HEADS and
    the ClassifierConfig). Returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "classifier.safetensors"), metadata={"format": "pt"})
    meta = {"format": FORMAT, "heads": {k: list(v) for k, v in HEADS.items()}, "config": asdict(model.config)}
    (folder / "classifier.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def _read_meta(folder: Path) -> ClassifierConfig:
    path = folder / "classifier.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: not a saved classifier folder")
    try:
        meta = json.loads(path.read_text())
        fmt, heads, config = meta["format"], meta["heads"], ClassifierConfig(**meta["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a classifier config ({type(e).__name__}: {e})") from None
    if fmt != FORMAT:
        raise ValueError(f"{path}: format {fmt!r}, expected {FORMAT!r}")
    if heads != {k: list(v) for k, v in HEADS.items()}:
        raise ValueError(f"{path}: the classifier was trained for other classes than HEADS: {heads}")
    return config


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> AttributeClassifier:
    """The classifier saved by save_classifier, in eval mode on `device`. Raises ValueError when a file is missing
    or unreadable, its HEADS differ from this module's, or a tensor is missing, extra or of another shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    model = AttributeClassifier(_read_meta(folder))
    path = folder / "classifier.safetensors"
    if not path.is_file():
        raise ValueError(f"{path} is missing")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    expected = model.state_dict()
    if set(tensors) != set(expected):
        raise ValueError(f"{path}: tensors differ from the config's model: missing "
                         f"{sorted(set(expected) - set(tensors))}, extra {sorted(set(tensors) - set(expected))}")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, expected {tuple(expected[name].shape)}")
    model.load_state_dict(tensors)
    return model.to(device).eval()
