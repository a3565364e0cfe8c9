"""8x8 digits on the core: data, a class-conditional flow, a CNN classifier and image rewards.

Data: scikit-learn's bundled ``load_digits`` (1,797 grey-scale images of 8x8
pixels with values 0..16, 10 classes), split once into a training and a
held-out test set (:func:`load_digits_data`).  A sample's state is the
flattened image ``x`` of shape ``(64,)`` with pixels scaled to ``[-1, 1]``
(``x = v / 8 - 1``); the class label is the *prompt*.

**How the prompt reaches the core.**  The core passes a per-sample condition
``cond`` (shape ``(B,)``, integer labels) from a ``cond_sampler(n, generator)``
to every velocity call (sampling, lean adjoint, loss, KL, importance weights),
but a terminal reward only sees ``x``.  Both sides therefore use one fixed rule,
:func:`prompt_schedule`: sample ``i`` of a batch of ``n`` carries prompt
``prompts[i mod P]`` (round-robin).  :meth:`DigitFlow.cond_sampler` returns this
schedule, :class:`DigitReward` scores sample ``i`` against the same prompt, and
``DigitFlow.velocity(x, t)`` without ``cond`` falls back to it as well.  Every
batch the core scores is one sampled batch, or a concatenation of chunks of
1,000 (offline batch) or 2,000 (threshold refinement) samples; ``P`` must divide
those chunk sizes (:func:`check_prompts`), so that positions line up.

Flow matching (Lipman et al. 2023): ``x_t = t x_1 + (1 - t) x_0``, ``t = 0``
noise, ``t = 1`` data; the network regresses ``x_1 - x_0``.  The label is
dropped (replaced by the null label ``10``) with probability ``p_uncond`` during
training, so classifier-free guidance
``v = v(x, t, null) + w (v(x, t, c) - v(x, t, null))`` is available (``w = 1``:
plain conditional velocity).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.flow import VelocityModule, time_features
from ..core.reward import DifferentiableReward

__all__ = ["NUM_CLASSES", "NULL_LABEL", "CHUNK_SIZES", "load_digits_data", "pixels_to_state", "state_to_images",
           "prompt_schedule", "check_prompts", "DigitFlow", "train_digit_flow", "DigitClassifier",
           "train_classifier", "classifier_accuracy", "DigitReward", "REWARD_KINDS", "make_digit_reward",
           "sample_digits", "within_prompt_diversity"]

NUM_CLASSES = 10
NULL_LABEL = 10  # the "no prompt" label of classifier-free guidance
# batch sizes in which the core scores samples (offline batch, threshold refinement); P must divide each
CHUNK_SIZES = (1000, 2000)


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------
def pixels_to_state(v: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Pixel values in ``[0, 16]`` (any shape ``(n, ...)`` with 64 pixels) -> states ``(n, 64)`` in ``[-1, 1]``."""
    v = torch.as_tensor(np.asarray(v), dtype=torch.float32)
    return v.reshape(v.shape[0], 64) / 8.0 - 1.0


def state_to_images(x: torch.Tensor) -> torch.Tensor:
    """States ``(n, 64)`` -> images ``(n, 8, 8)`` with intensities clipped to ``[0, 1]`` (for display)."""
    return ((x.detach().float().cpu() + 1.0) / 2.0).clamp(0, 1).reshape(-1, 8, 8)


def load_digits_data(split: str = "train", test_fraction: float = 0.25, seed: int = 0):
    """The bundled digits as ``(x, y)``: states ``(n, 64)`` in ``[-1, 1]`` and labels ``(n,)`` in 0..9.

    Args:
        split: ``"train"`` (1,347 images), ``"test"`` (450, held out from every shipped model) or ``"all"``.
        test_fraction, seed: the stratified split (the shipped models use the defaults).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise ValueError(f"split={split!r} must be one of 'train', 'test', 'all'")
    X, y = load_digits(return_X_y=True)
    if split != "all":
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_fraction, stratify=y, random_state=seed)
        X, y = (Xtr, ytr) if split == "train" else (Xte, yte)
    return pixels_to_state(X), torch.as_tensor(y, dtype=torch.long)


# ----------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------
def check_prompts(prompts: Iterable[int]) -> tuple[int, ...]:
    """Validate a prompt list: distinct digits in 0..9 whose count divides every size of :data:`CHUNK_SIZES`."""
    p = tuple(int(v) for v in prompts)
    if not p or len(set(p)) != len(p) or any(not 0 <= v < NUM_CLASSES for v in p):
        raise ValueError(f"prompts={list(p)} must be distinct digits in 0..9, at least one")
    bad = [c for c in CHUNK_SIZES if c % len(p)]
    if bad:
        raise ValueError(f"prompts={list(p)}: their number ({len(p)}) must divide the core's scoring chunk sizes "
                         f"{list(CHUNK_SIZES)}, i.e. be one of 1, 2, 4, 5, 8 or 10")
    return p


def prompt_schedule(n: int, prompts: Sequence[int] = tuple(range(NUM_CLASSES)),
                    device: Optional[torch.device | str] = None) -> torch.Tensor:
    """The prompt of each position of a batch of ``n``: ``prompts[i mod P]``, shape ``(n,)`` (long)."""
    p = torch.as_tensor(list(prompts), dtype=torch.long, device=device)
    return p[torch.arange(n, device=device) % len(p)]


# ----------------------------------------------------------------------------
# The class-conditional flow
# ----------------------------------------------------------------------------
class DigitFlow(VelocityModule):
    """``v_theta(x, t, c)``: an MLP on ``(x, time features, label embedding)``; ``x``: ``(B, 64)``, ``t``: ``(B,)``.

    Args:
        hidden, layers: MLP width and depth (SiLU).
        embed: label-embedding width (11 labels: the digits and the null label 10).
        guidance: classifier-free guidance weight ``w`` used by :meth:`velocity` (1 = none).
        prompts: the round-robin prompt list used when ``cond`` is ``None`` (:func:`prompt_schedule`).
    """

    def __init__(self, hidden: int = 256, layers: int = 4, embed: int = 64, guidance: float = 1.0,
                 prompts: Sequence[int] = tuple(range(NUM_CLASSES))):
        super().__init__()
        self.state_shape = (64,)
        self.hparams = {"hidden": hidden, "layers": layers, "embed": embed}
        self.guidance = float(guidance)
        self.prompts = check_prompts(prompts)
        self.label = nn.Embedding(NUM_CLASSES + 1, embed)
        dims = [64 + 17 + embed] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*mods, nn.Linear(dims[-1], 64))

    @property
    def cache_key(self) -> str:
        """Offline-batch cache key: a hash of the current weights plus the guidance weight and the prompts,
        which change the samples without changing the weights (a fine-tuned copy gets its own key)."""
        import hashlib

        h = hashlib.sha1()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return f"digitflow:{h.hexdigest()[:16]}:w={self.guidance:g}:p={','.join(map(str, self.prompts))}"

    def labels(self, n: int, cond=None, device=None) -> torch.Tensor:
        """The labels ``(n,)`` used for a batch: ``cond`` if given, else the prompt schedule."""
        if cond is None:
            return prompt_schedule(n, self.prompts, device)
        c = torch.as_tensor(cond, dtype=torch.long, device=device)
        if c.shape != (n,):
            raise ValueError(f"cond has shape {tuple(c.shape)}; expected ({n},) integer labels")
        return c

    def cond_sampler(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The core's ``cond_sampler``: the deterministic round-robin prompts of a batch of ``n``."""
        return prompt_schedule(n, self.prompts)

    def raw(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The network's velocity for explicit labels ``(B,)`` in 0..10 (10 = unconditional)."""
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        h = torch.cat([x, time_features(t.to(x.dtype)), self.label(labels.to(x.device))], 1)
        return self.net(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        c = self.labels(x.shape[0], cond, x.device)
        v = self.raw(x, t, c)
        if self.guidance != 1.0:
            vu = self.raw(x, t, torch.full_like(c, NULL_LABEL))
            v = vu + self.guidance * (v - vu)
        return v


def train_digit_flow(model: DigitFlow, x: torch.Tensor, y: torch.Tensor, steps: int = 20000,
                     batch_size: int = 256, lr: float = 1e-3, p_uncond: float = 0.1, seed: int = 0,
                     progress: bool = False, log_every: int = 0, log=print) -> list[float]:
    """Conditional flow matching with label dropout (:func:`tfftmol.training.train_flow_matching`)."""
    from ..training import train_flow_matching

    model.train()
    losses = train_flow_matching(model.raw, model.parameters(), x, y, steps=steps, batch_size=batch_size, lr=lr,
                                 seed=seed, p_uncond=p_uncond, null_label=NULL_LABEL, progress=progress,
                                 log_every=log_every, log=log)
    model.eval()
    return losses


# ----------------------------------------------------------------------------
# The classifier
# ----------------------------------------------------------------------------
class DigitClassifier(nn.Module):
    """A small CNN ``(B, 64)`` states -> ``(B, 10)`` logits (smooth SiLU activations, so gradients are useful).

    conv 3x3 (1->c) - conv 3x3 (c->2c) - avgpool 2 - conv 3x3 (2c->2c) - avgpool 2 - linear (8c -> 10).
    """

    def __init__(self, channels: int = 32):
        super().__init__()
        c = channels
        self.hparams = {"channels": c}
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),          # (2c, 4, 4)
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),      # (2c, 2, 2)
        )
        self.head = nn.Linear(8 * c, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, 1, 8, 8)).flatten(1))

    def log_prob(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``log p(label | x)``, shape ``(B,)``."""
        return torch.log_softmax(self(x), 1).gather(1, labels.to(x.device)[:, None])[:, 0]


def train_classifier(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor, epochs: int = 60,
                     batch_size: int = 64, lr: float = 2e-3, noise: float = 0.1, label_smoothing: float = 0.1,
                     seed: int = 0) -> list[float]:
    """Cross-entropy training with Gaussian pixel-noise augmentation (std ``noise`` in state units).

    Label smoothing keeps ``log p(label | x)`` of typical training images near ``log(1 - 0.9 eps)``
    instead of saturating at 0 in float32, so the alignment reward still ranks confident images
    (its right tail holds the most prototypical ones) and its gradient does not vanish there.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.02)
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            xb = x[idx] + noise * torch.randn(len(idx), 64, generator=gen)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def classifier_accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` whose arg-max class equals ``y``."""
    return float((model(x).argmax(1) == y).float().mean())


# ----------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------
def _ink(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) / 2.0).mean(1)  # mean intensity in [0, 1] units (0 = blank, 1 = all black)


def _contrast(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) / 2.0).std(1)   # per-image standard deviation of the intensities


REWARD_KINDS = ("alignment", "ink", "contrast")


class DigitReward(DifferentiableReward):
    """A differentiable image reward, a :class:`~tfftmol.core.reward.TerminalReward` on states ``(B, 64)``.

    ``r(x) = sum_k w_k r_k(x)`` over the terms of ``weights``:

    * ``alignment``: ``log p(prompt | x)`` from the classifier (<= 0; 0 = certain); sample ``i`` of a
      batch of ``B`` is scored against ``prompts[i mod P]`` (:func:`prompt_schedule`);
    * ``ink``: mean pixel intensity in ``[0, 1]`` units;
    * ``contrast``: standard deviation of the pixel intensities.

    Args:
        weights: ``{term: weight}``, e.g. ``{"alignment": 1.0}`` or ``{"alignment": 1.0, "ink": 2.0}``.
        classifier: a :class:`DigitClassifier` (needed by ``alignment``; frozen here).
        prompts: the prompt list of the run (the same as the flow's).
    """

    def __init__(self, weights: dict, classifier: Optional[DigitClassifier] = None,
                 prompts: Sequence[int] = tuple(range(NUM_CLASSES))):
        bad = sorted(set(weights) - set(REWARD_KINDS))
        if bad or not weights:
            raise ValueError(f"unknown image reward term(s) {bad or '(none given)'}; valid terms: {list(REWARD_KINDS)}")
        self.weights = {k: float(v) for k, v in weights.items()}
        self.prompts = check_prompts(prompts)
        if "alignment" in self.weights:
            if classifier is None:
                raise ValueError("the alignment reward needs a classifier (load_pretrained('digits-classifier'))")
            for p in classifier.parameters():
                p.requires_grad_(False)
            classifier.eval()
        self.classifier = classifier
        name = "+".join(k if w == 1 else f"{w:g}*{k}" for k, w in self.weights.items())
        super().__init__(self._value, name=name)
        ck = getattr(classifier, "cache_key", "none") if classifier is not None else "none"
        self.cache_key = f"digits:{name}:p={','.join(map(str, self.prompts))}:clf={ck}"

    def terms(self, x: torch.Tensor, prompts: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Each term ``(B,)`` separately (no weights); ``prompts`` ``(B,)`` default to the schedule."""
        out = {}
        for k in self.weights:
            if k == "alignment":
                if prompts is None:
                    prompts = prompt_schedule(x.shape[0], self.prompts, x.device)
                out[k] = self.classifier.log_prob(x, prompts)
            elif k == "ink":
                out[k] = _ink(x)
            else:
                out[k] = _contrast(x)
        return out

    def _value(self, x: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[k] * v for k, v in self.terms(x).items())

    @torch.no_grad()
    def fn_with_prompts(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """The reward ``(B,)`` of images with explicit prompts ``(B,)`` (evaluation; no gradient)."""
        return sum(self.weights[k] * v for k, v in self.terms(x, prompts).items())


def make_digit_reward(spec, classifier: Optional[DigitClassifier] = None,
                      prompts: Sequence[int] = tuple(range(NUM_CLASSES))) -> DigitReward:
    """Build a :class:`DigitReward` from ``"alignment"``, ``{"name": "ink"}`` or ``{"name": "sum", "weights": {...}}``."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name == "sum":
        weights = spec.pop("weights", None)
        if not isinstance(weights, dict):
            raise ValueError("reward 'sum' needs weights: {term: weight}, e.g. {alignment: 1.0, ink: 2.0}")
    elif name in REWARD_KINDS:
        weights = {name: float(spec.pop("weight", 1.0))}
    else:
        raise ValueError(f"unknown image reward {name!r}; valid names: {list(REWARD_KINDS) + ['sum']}")
    if spec:
        raise ValueError(f"unknown image reward option(s) {sorted(spec)} for reward {name!r}")
    return DigitReward(weights, classifier, prompts)


# ----------------------------------------------------------------------------
# Sampling and metrics
# ----------------------------------------------------------------------------
@torch.no_grad()
def sample_digits(model, n: int, steps: int = 30, sampler: str = "sde", seed: int = 0,
                  prompts: Optional[Sequence[int]] = None, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` states ``(n, 64)`` and their prompts ``(n,)`` (round-robin per chunk) from a digit flow.

    ``prompts`` default to ``model.prompts``.  The noise comes from a generator seeded with ``seed``,
    so two models see the same starting noise.
    """
    from ..core.sampling import sample

    if sampler not in ("ode", "heun", "sde"):
        raise ValueError(f"sampler={sampler!r} must be one of 'ode', 'heun', 'sde'")
    prompts = check_prompts(model.prompts if prompts is None else prompts)
    if batch_size % len(prompts):
        raise ValueError(f"batch_size={batch_size} must be a multiple of the number of prompts {len(prompts)}")
    out = sample(model, n, method={"ode": "euler"}.get(sampler, sampler), steps=steps,
                 generator=torch.Generator().manual_seed(seed), batch_size=batch_size,
                 cond_sampler=lambda m, g: prompt_schedule(m, prompts))
    return out.x.cpu(), out.cond


def within_prompt_diversity(x: torch.Tensor, prompts: torch.Tensor, max_per_prompt: int = 500) -> float:
    """Diversity proxy: mean pairwise Euclidean pixel distance between samples of the same prompt,
    averaged over prompts (states in ``[-1, 1]`` units; ``x``: ``(n, 64)``, ``prompts``: ``(n,)``)."""
    vals = []
    for c in torch.unique(prompts):
        xc = x[prompts == c][:max_per_prompt].double()
        if len(xc) < 2:
            continue
        d = torch.cdist(xc, xc)
        vals.append(float(d.sum() / (len(xc) * (len(xc) - 1))))
    return float(np.mean(vals)) if vals else float("nan")
