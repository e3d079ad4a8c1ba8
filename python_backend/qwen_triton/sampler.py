"""Turn a step's logits into next tokens, each row with its own request's parameters.

Order per row: penalties -> temperature (fixed, or dynamic from the entropy) -> top-k -> top-p ->
min-p -> draw. Draws use the exponential-race trick (argmax of p / E with E ~ Exp(1)) so that a seeded
request reads exactly `vocab_size` numbers from its own generator each step: the same seed and prompt
give the same text alone or inside any batch, and across preemptions.
"""

from __future__ import annotations

import math

import torch

from .sequence import Sequence


class Sampler:
    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[float]]:
        """logits: [len(seqs), vocab] float32 -> (token ids, log-probabilities of those tokens)."""
        logits = logits[:, : self.vocab_size]
        raw_logits = logits
        logits = self._apply_penalties(logits, seqs)
        greedy = [s.params.greedy for s in seqs]
        tokens = logits.argmax(dim=-1)
        if not all(greedy):
            sampled = self._sample(logits, seqs)
            tokens = torch.where(torch.tensor(greedy, device=logits.device), tokens, sampled)
        if not any(s.params.logprobs for s in seqs):
            return tokens.tolist(), [0.0] * len(seqs)  # a full-vocabulary log-softmax nobody asked for
        chosen = torch.log_softmax(raw_logits, dim=-1).gather(1, tokens.unsqueeze(1)).squeeze(1)
        return tokens.tolist(), chosen.tolist()

    def _apply_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        rows = [i for i, s in enumerate(seqs) if _has_penalty(s)]
        if not rows:
            return logits
        logits = logits.clone()
        for i in rows:
            p = seqs[i].params
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(seqs[i].all_token_ids)), device=logits.device, dtype=torch.long)
                values = logits[i, seen]
                logits[i, seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
            if (p.presence_penalty or p.frequency_penalty) and seqs[i].output_token_ids:
                counts = torch.bincount(torch.tensor(seqs[i].output_token_ids, device=logits.device),
                                        minlength=logits.shape[1]).to(logits.dtype)
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
        return logits

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        temperatures = _temperatures(logits, seqs)
        probs = torch.softmax(logits / temperatures.clamp(min=1e-5).unsqueeze(1), dim=-1)
        probs = _filter(probs, seqs)
        # Seeded requests draw from their own generator (reproducible in any batch); the others share
        # one draw from the device's default generator: one kernel instead of one per row.
        noise = torch.empty_like(probs).exponential_()
        for i, seq in enumerate(seqs):
            if seq.generator is not None:
                noise[i].exponential_(generator=seq.generator)
        return (probs / noise).argmax(dim=-1)


def _has_penalty(seq: Sequence) -> bool:
    p = seq.params
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def _temperatures(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Each row's temperature; dynamic rows scale between their bounds by the normalised entropy of
    their distribution at temperature 1, computed for all of them at once on the device."""
    device, dtype = logits.device, logits.dtype
    fixed = torch.tensor([s.params.temperature for s in seqs], device=device, dtype=dtype)
    dynamic = [i for i, s in enumerate(seqs) if s.params.dynamic_temperature]
    if not dynamic:
        return fixed
    rows = torch.tensor(dynamic, device=device)
    logp = torch.log_softmax(logits[rows], dim=-1)
    normalized = -(logp.exp() * logp).sum(dim=-1) / math.log(logits.shape[-1])
    low = torch.tensor([seqs[i].params.min_temperature for i in dynamic], device=device, dtype=dtype)
    high = torch.tensor([seqs[i].params.max_temperature for i in dynamic], device=device, dtype=dtype)
    return fixed.index_copy(0, rows, low + (high - low) * normalized)


def _filter(probs: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Zero the probabilities that top-k, top-p or min-p exclude (the top token always survives)."""
    top_k = [s.params.top_k for s in seqs]
    top_p = [s.params.top_p for s in seqs]
    min_p = [s.params.min_p for s in seqs]
    if all(k == 0 for k in top_k) and all(p >= 1.0 for p in top_p) and all(m == 0 for m in min_p):
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(probs.shape[1], device=probs.device).unsqueeze(0)
    k = torch.tensor([k if k > 0 else probs.shape[1] for k in top_k], device=probs.device).unsqueeze(1)
    keep = ranks < k
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep &= mass_before < torch.tensor(top_p, device=probs.device, dtype=probs.dtype).unsqueeze(1)
    threshold = sorted_probs[:, :1] * torch.tensor(min_p, device=probs.device, dtype=probs.dtype).unsqueeze(1)
    keep &= sorted_probs >= threshold
    keep[:, 0] = True
    filtered = torch.zeros_like(probs).scatter(1, order, sorted_probs * keep)
    return filtered
