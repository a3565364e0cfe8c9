"""Train the shipped digit models: ``digits-classifier`` (CNN) and ``digits-flow`` (class-conditional flow).

Usage: ``python scripts/pretrain_digits.py [--flow-steps 20000] [--only classifier|flow]``.

Both train on the same stratified training split of scikit-learn's bundled
``load_digits`` (1,347 images); the 450 test images are held out from both.
Writes ``tfftmol/digits/weights/digits-{classifier,flow}.safetensors`` and JSON
cards: the classifier's card states its test accuracy, the flow's card the
classifier's accuracy on the flow's samples with the prompt as label, at each
guidance weight tried, and the guidance weight the loader uses by default.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from tfftmol.core.checkpoint import save_tensors
from tfftmol.digits.models import (DigitClassifier, DigitFlow, classifier_accuracy, load_digits_data,
                                    sample_digits, train_classifier, train_digit_flow, within_prompt_diversity)

OUT = Path(__file__).resolve().parents[1] / "tfftmol" / "digits" / "weights"
DATA = "sklearn.datasets.load_digits, stratified train_test_split(test_size=0.25, random_state=0)"


def _save(model, name: str, card: dict, out: Path) -> None:
    path = out / f"{name}.safetensors"
    save_tensors(path, {k: v.contiguous() for k, v in model.state_dict().items()})
    card["sha1"] = hashlib.sha1(path.read_bytes()).hexdigest()
    card["size_bytes"] = path.stat().st_size
    (out / f"{name}.card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card.get("metrics", {}), indent=1))


def train_classifier_main(a) -> DigitClassifier:
    xtr, ytr = load_digits_data("train")
    xte, yte = load_digits_data("test")
    torch.manual_seed(0)
    clf = DigitClassifier(channels=a.channels)
    t0 = time.perf_counter()
    losses = train_classifier(clf, xtr, ytr, epochs=a.clf_epochs, noise=a.clf_noise,
                              label_smoothing=a.clf_smoothing, seed=0)
    dt = time.perf_counter() - t0
    card = {
        "name": "digits-classifier",
        "description": "CNN digit classifier (3 conv layers, SiLU, avg-pool) on 8x8 digits; "
                       "log p(prompt | image) is the alignment reward",
        "hparams": clf.hparams,
        "data": DATA + "; 1347 train / 450 test images; states = pixels / 8 - 1",
        "budget": {"epochs": a.clf_epochs, "batch_size": 64, "lr": 2e-3, "optimizer": "AdamW, cosine",
                   "augmentation": f"Gaussian pixel noise, std {a.clf_noise} (state units)",
                   "label_smoothing": a.clf_smoothing, "seconds": round(dt, 1)},
        "metrics": {"test_accuracy": classifier_accuracy(clf, xte, yte),
                    "train_accuracy": classifier_accuracy(clf, xtr, ytr),
                    "n_test": len(yte), "final_loss_mean_last50": float(sum(losses[-50:]) / 50)},
    }
    _save(clf, "digits-classifier", card, a.out)
    return clf


def train_flow_main(a, clf: DigitClassifier) -> None:
    xtr, ytr = load_digits_data("train")
    xte, _ = load_digits_data("test")
    torch.manual_seed(0)
    flow = DigitFlow(hidden=a.hidden, layers=a.layers, embed=64)
    t0 = time.perf_counter()
    losses = train_digit_flow(flow, xtr, ytr, steps=a.flow_steps, batch_size=256, lr=a.lr, p_uncond=0.1, seed=0,
                              log_every=1000)
    dt = time.perf_counter() - t0
    by_w = {}
    for w in a.guidance:
        flow.guidance = w
        for sampler in ("sde", "heun"):
            x, c = sample_digits(flow, 2000, steps=30, sampler=sampler, seed=1)
            by_w[f"w={w:g},{sampler}"] = {
                "accuracy_prompt_as_label": classifier_accuracy(clf, x, c),
                "diversity_within_prompt": within_prompt_diversity(x, c),
            }
    print(json.dumps(by_w, indent=1))
    best = a.default_guidance
    flow.guidance = 1.0
    card = {
        "name": "digits-flow",
        "description": "class-conditional MLP flow (label embedding, null label for classifier-free guidance) "
                       "on 8x8 digits, trained by flow matching; the prompt is the class label",
        "hparams": flow.hparams,
        "default_guidance": best,
        "data": DATA + "; 1347 train images; states = pixels / 8 - 1 in [-1, 1]",
        "budget": {"steps": a.flow_steps, "batch_size": 256, "lr": a.lr, "schedule": "cosine",
                   "label_dropout": 0.1, "seconds": round(dt, 1)},
        "metrics": {
            "final_loss_mean_last500": float(sum(losses[-500:]) / 500),
            "samples": "2000 samples (prompts round-robin 0..9), 30 steps, memoryless SDE or Heun ODE; "
                       "accuracy = digits-classifier's arg-max equals the prompt",
            "by_guidance": by_w,
            "diversity_test_images": within_prompt_diversity(xte, load_digits_data("test")[1]),
        },
    }
    _save(flow, "digits-flow", card, a.out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["classifier", "flow"], default=None)
    p.add_argument("--flow-steps", type=int, default=20000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    p.add_argument("--default-guidance", type=float, default=1.0)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--clf-epochs", type=int, default=60)
    p.add_argument("--clf-noise", type=float, default=0.1)
    p.add_argument("--clf-smoothing", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.only != "flow":
        clf = train_classifier_main(a)
    else:
        from tfftmol.digits.pretrained import load_digits_classifier
        clf = load_digits_classifier()
    if a.only != "classifier":
        train_flow_main(a, clf)


if __name__ == "__main__":
    main()
