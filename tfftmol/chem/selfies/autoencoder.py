"""A small SELFIES VAE: bidirectional-GRU encoder, GRU decoder conditioned on the latent.

Every string the decoder emits is a SELFIES, so every decoded latent is a
molecule (docs/design.md §8).  Decoding is greedy (argmax) by default, so a latent
maps to one molecule: a deterministic ``decode`` is what a reward on the final
latent of a flow needs.  Beam search (``beam > 1``, :meth:`SelfiesVAE.beam_search`)
is deterministic too and returns the most likely string among its beams: greedy
decoding flips at every near-tie of a token's probabilities, so the decoded molecule
is a rough function of the latent; the beam's sequence-level choice flips less often
(docs/design.md §8.1).

Shapes: tokens ``(B, L)`` long (symbols, ``<eos>``, ``<pad>``; see
:mod:`.codec`), latents ``(B, latent_dim)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .codec import BOS, EOS, PAD

__all__ = ["VAEConfig", "SelfiesVAE"]


@dataclass
class VAEConfig:
    vocab_size: int
    max_len: int                 # symbols; sequences have max_len + 1 positions (<eos>)
    emb_dim: int = 64
    enc_hidden: int = 128
    dec_hidden: int = 256
    latent_dim: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


class SelfiesVAE(nn.Module):
    """``encode(tokens) -> (mu, logvar)``; ``forward(tokens) -> (logits, mu, logvar)`` (teacher forcing);
    ``generate(z) -> tokens`` (greedy, sampled with ``temperature > 0``, or beam search with ``beam > 1``)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        c = self.config = config
        self.emb = nn.Embedding(c.vocab_size, c.emb_dim, padding_idx=PAD)
        self.enc = nn.GRU(c.emb_dim, c.enc_hidden, batch_first=True, bidirectional=True)
        self.to_mu = nn.Linear(2 * c.enc_hidden, c.latent_dim)
        self.to_logvar = nn.Linear(2 * c.enc_hidden, c.latent_dim)
        self.z_to_h = nn.Linear(c.latent_dim, c.dec_hidden)
        self.dec = nn.GRU(c.emb_dim + c.latent_dim, c.dec_hidden, batch_first=True)
        self.out = nn.Linear(c.dec_hidden, c.vocab_size)

    # -- encoder -------------------------------------------------------------------------------
    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens (B, L)`` -> ``mu, logvar`` each ``(B, latent_dim)``."""
        lengths = ((tokens != PAD).sum(1)).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.emb(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, h = self.enc(packed)                       # (2, B, H)
        h = torch.cat([h[0], h[1]], dim=-1)
        return self.to_mu(h), self.to_logvar(h).clamp(-12.0, 6.0)

    # -- decoder (teacher forcing) -------------------------------------------------------------
    def decode_logits(self, z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, V)`` of ``tokens`` given ``z``; the input at position 0 is ``<bos>``."""
        B, L = tokens.shape
        inp = torch.cat([torch.full((B, 1), BOS, dtype=torch.long, device=tokens.device), tokens[:, :-1]], 1)
        x = torch.cat([self.emb(inp), z.unsqueeze(1).expand(B, L, z.shape[-1])], -1)
        h0 = torch.tanh(self.z_to_h(z)).unsqueeze(0)
        y, _ = self.dec(x, h0)
        return self.out(y)

    def forward(self, tokens: torch.Tensor, sample: bool = True):
        mu, logvar = self.encode(tokens)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.decode_logits(z, tokens), mu, logvar

    # -- decoder (generation) ------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, z: torch.Tensor, max_len: int | None = None, temperature: float = 0.0,
                 generator: torch.Generator | None = None, beam: int = 1) -> torch.Tensor:
        """Tokens ``(B, max_len + 1)`` decoded from ``z`` (finite), stopping at ``<eos>``.

        ``beam > 1`` runs :meth:`beam_search` (deterministic; ``temperature`` must be 0).

        The GRU recurrence is written out with the embedding and latent parts of
        the input projection precomputed (same maths as ``nn.GRU``), and a row leaves
        the batch as soon as it emits ``<eos>`` (the batch shrinks to the molecules
        still being written, about half of the steps on ZINC250k-length strings):
        that is what makes decoding fast on a CPU.  ``<pad>`` and ``<bos>`` are never emitted.
        """
        if int(beam) != beam or beam < 1:
            raise ValueError(f"beam={beam!r} must be an integer >= 1 (1 = greedy)")
        if beam > 1:
            if temperature > 0:
                raise ValueError(f"beam={beam} is deterministic; temperature={temperature} must be 0 with it")
            return self.beam_search(z, int(beam), max_len)
        L = (self.config.max_len if max_len is None else int(max_len)) + 1
        B = z.shape[0]
        E = self.config.emb_dim
        w_ih, w_hh = self.dec.weight_ih_l0, self.dec.weight_hh_l0
        b_ih, b_hh = self.dec.bias_ih_l0, self.dec.bias_hh_l0
        tok_gates = self.emb.weight @ w_ih[:, :E].T                 # (V, 3H)
        z_gates = z @ w_ih[:, E:].T + b_ih                          # (B, 3H)
        w_hh_t = w_hh.T.contiguous()
        H2 = 2 * self.config.dec_hidden
        w_out_t = self.out.weight.T.contiguous()
        out_bias = self.out.bias.detach().clone()
        out_bias[PAD] = out_bias[BOS] = float("-inf")               # never emitted
        h = torch.tanh(self.z_to_h(z))
        out = torch.full((B, L), PAD, dtype=torch.long, device=z.device)
        prev = torch.full((B,), BOS, dtype=torch.long, device=z.device)
        rows = torch.arange(B, device=z.device)                     # the unfinished rows, in order
        for i in range(L):
            gi = tok_gates[prev] + z_gates
            gh = torch.addmm(b_hh, h, w_hh_t)
            ru = torch.sigmoid(gi[:, :H2] + gh[:, :H2])             # reset and update gates together
            n = torch.tanh(torch.addcmul(gi[:, H2:], ru[:, :H2 // 2], gh[:, H2:]))
            h = torch.lerp(n, h, ru[:, H2 // 2:])                   # n + u (h - n)
            logits = torch.addmm(out_bias, h, w_out_t)
            if i == L - 1:
                nxt = torch.full((len(rows),), EOS, dtype=torch.long, device=z.device)
            elif temperature > 0:
                nxt = torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=generator).squeeze(1)
            else:
                nxt = logits.argmax(-1)
            out[rows, i] = nxt
            going = nxt != EOS
            if not bool(going.all()):  # drop the finished rows: the batch shrinks as molecules end
                if not bool(going.any()):
                    break
                rows, h, z_gates, nxt = rows[going], h[going], z_gates[going], nxt[going]
            prev = nxt
        return out

    @torch.no_grad()
    def beam_search(self, z: torch.Tensor, beam: int, max_len: int | None = None) -> torch.Tensor:
        """Tokens ``(B, max_len + 1)``: per row, the most likely string among ``beam`` beams.

        Scores are summed token log-probabilities (over the emittable tokens); a beam that has
        emitted ``<eos>`` keeps its score and is padded.  A beam still open at the last position
        ends with ``<eos>`` there (as in greedy decoding).  ``beam=1`` equals greedy decoding.  Ties
        between candidates are broken by ``torch.topk`` (deterministic on one device).
        """
        K = int(beam)
        L = (self.config.max_len if max_len is None else int(max_len)) + 1
        B, V = z.shape[0], self.config.vocab_size
        dev = z.device
        zz = z.repeat_interleave(K, 0)                              # (B K, latent)
        h = torch.tanh(self.z_to_h(zz)).unsqueeze(0)
        score = torch.full((B, K), float("-inf"), device=dev)
        score[:, 0] = 0.0                                           # one live beam per row at the start
        seqs = torch.full((B * K, L), PAD, dtype=torch.long, device=dev)
        prev = torch.full((B * K,), BOS, dtype=torch.long, device=dev)
        done = torch.zeros(B * K, dtype=torch.bool, device=dev)
        base = (torch.arange(B, device=dev) * K).unsqueeze(1)
        for i in range(L):
            y, h = self.dec(torch.cat([self.emb(prev), zz], -1).unsqueeze(1), h)
            logits = self.out(y[:, 0])
            logits[:, PAD] = logits[:, BOS] = float("-inf")         # never emitted: renormalised without them
            lp = F.log_softmax(logits, -1)
            if i == L - 1:                                          # the last position ends every open beam
                keep = lp[:, EOS].clone()
                lp.fill_(float("-inf"))
                lp[:, EOS] = keep
            lp[done] = float("-inf")
            lp[done, PAD] = 0.0                                     # a finished beam only pads, at no cost
            cand = (score.reshape(-1, 1) + lp).reshape(B, K * V)
            score, idx = cand.topk(K, dim=-1)
            src = (base + torch.div(idx, V, rounding_mode="floor")).reshape(-1)
            tok = (idx % V).reshape(-1)
            seqs, h, done = seqs[src], h[:, src], done[src]
            seqs[:, i] = tok
            done = done | (tok == EOS)
            prev = torch.where(tok == PAD, torch.full_like(tok, EOS), tok)
            if bool(done.all()):
                break
        return seqs.reshape(B, K, L)[:, 0]


def vae_loss(model: SelfiesVAE, tokens: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """``sum-over-tokens CE / B + beta * KL / B`` and its parts (per molecule) + token accuracy."""
    logits, mu, logvar = model(tokens)
    mask = tokens != PAD
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), reduction="none").view_as(tokens)
    ce = (ce * mask).sum() / tokens.shape[0]
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum() / tokens.shape[0]
    with torch.no_grad():
        acc = ((logits.argmax(-1) == tokens) & mask).sum().float() / mask.sum().clamp(min=1)
    return ce + beta * kl, {"ce": float(ce.detach()), "kl": float(kl.detach()), "tok_acc": float(acc)}
