"""Turn a step's logits into next tokens, each row with its own request's parameters.

Order per row: grammar mask (structured output) -> penalties -> logit_bias, bad words, EOS until
min_tokens (masks) -> temperature (fixed, or dynamic from the entropy) -> top-k -> top-p -> min-p -> draw.
Draws use the exponential-race trick (argmax of p / E with E ~ Exp(1)) so that a seeded request reads
exactly `vocab_size` numbers from its own generator each step: the same seed and prompt give the same text
alone or inside any batch, and across preemptions.

Nothing here waits for the device: the chosen tokens stay on it (the next step can read them as its
input ids before the host has seen them) while their copy to the host is queued behind them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qwen_triton.engine.sequence import Sequence
from qwen_triton.structured.matcher import BitmaskFiller, apply_bitmask
from qwen_triton.transfer import HostCopy, to_device


@dataclass
class SampledTokens:
    tokens: torch.Tensor  # [rows] int64 on the device
    logprobs: torch.Tensor | None  # [rows] float32 on the device, when some row asked for them
    copy: HostCopy  # all on their way to the host
    # [rows, k] ids and log-probabilities of the k best tokens, k the largest top_logprobs of the rows
    top_logprobs: tuple[torch.Tensor, torch.Tensor] | None = None

    def lists(self) -> tuple[list[int], list[float]]:
        """(token ids, log-probabilities), waiting for the step that made them and nothing after it."""
        copied = self.copy.lists()
        return copied[0], copied[1] if self.logprobs is not None else [0.0] * len(copied[0])

    def top_lists(self) -> list[list[tuple[int, float]]] | None:
        """Per row, the (token id, log-probability) of the best alternatives, best first; None if no row asked."""
        if self.top_logprobs is None:
            return None
        copied = self.copy.lists()
        return [list(zip(ids, values)) for ids, values in zip(copied[2], copied[3])]


class Sampler:
    def __init__(self, vocab_size: int, eos_token_ids: frozenset[int] = frozenset()):
        self.vocab_size = vocab_size
        self.eos_token_ids = sorted(eos_token_ids)  # masked until a row's min_tokens are out
        self.bitmask_filler = BitmaskFiller(vocab_size)

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> SampledTokens:
        """logits: [len(seqs), vocab] float32 -> the next token of each row (and its log-probability)."""
        logits = logits[:, : self.vocab_size]
        raw_logits = logits
        logits = self._apply_grammar(logits, seqs)
        logits = self._apply_penalties(logits, seqs)
        logits = self._apply_bias_and_bans(logits, seqs)
        greedy = [s.params.greedy for s in seqs]
        tokens = logits.argmax(dim=-1)
        if not all(greedy):
            sampled = self._sample(logits, seqs)
            tokens = torch.where(to_device(greedy, torch.bool, logits.device), tokens, sampled)
        if not any(s.params.logprobs or s.params.top_logprobs for s in seqs):
            return SampledTokens(tokens, None, HostCopy(tokens))  # no full-vocabulary log-softmax nobody asked for
        logp = torch.log_softmax(raw_logits, dim=-1)
        chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
        k = max(s.params.top_logprobs for s in seqs)
        if not k:
            return SampledTokens(tokens, chosen, HostCopy(tokens, chosen))
        top_values, top_ids = logp.topk(k, dim=-1)
        return SampledTokens(tokens, chosen, HostCopy(tokens, chosen, top_ids, top_values), (top_ids, top_values))

    def _apply_grammar(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Tokens a guided row's grammar forbids set to -inf. The engine calls `sample` right after queuing
        the forward, so on a GPU the host fills the bitmask while the device computes the logits."""
        if not any(seq.matcher is not None for seq in seqs):
            return logits
        for seq in seqs:
            if seq.matcher is not None:
                seq.matcher.sync(seq.output_token_ids)
        bitmask = self.bitmask_filler.fill([seq.matcher for seq in seqs], pin=logits.is_cuda)
        return apply_bitmask(logits, bitmask)

    def _apply_bias_and_bans(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """logit_bias added; bad words' completing tokens and (before min_tokens) EOS / stop ids set to -inf."""
        bans = [_banned_tokens(seq, self.eos_token_ids) for seq in seqs]
        rows = [i for i, s in enumerate(seqs) if s.params.logit_bias or bans[i]]
        if not rows:
            return logits
        logits = logits.clone()
        for i in rows:
            bias = seqs[i].params.logit_bias
            if bias:
                ids = to_device(list(bias), torch.long, logits.device)
                logits[i, ids] += to_device(list(bias.values()), logits.dtype, logits.device)
            if bans[i]:
                logits[i, to_device(sorted(bans[i]), torch.long, logits.device)] = float("-inf")
        return logits

    def _apply_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        rows = [i for i, s in enumerate(seqs) if s.params.has_penalties]
        if not rows:
            return logits
        logits = logits.clone()
        for i in rows:
            p = seqs[i].params
            if p.repetition_penalty != 1.0:
                seen = to_device(sorted(set(seqs[i].all_token_ids)), torch.long, logits.device)
                values = logits[i, seen]
                logits[i, seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
            if (p.presence_penalty or p.frequency_penalty) and seqs[i].output_token_ids:
                counts = torch.bincount(
                    to_device(seqs[i].output_token_ids, torch.long, logits.device), minlength=logits.shape[1]
                ).to(logits.dtype)
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


def _banned_tokens(seq: Sequence, eos_token_ids: list[int]) -> set[int]:
    """Tokens this row may not draw now: the last token of every bad-word tokenization whose other tokens
    the output just produced, and EOS / stop ids while fewer than min_tokens are out."""
    banned: set[int] = set()
    output = seq.output_token_ids
    for word in seq.bad_word_token_ids:
        head = word[:-1]
        if not head or (len(output) >= len(head) and output[len(output) - len(head) :] == head):
            banned.add(word[-1])
    if len(output) < seq.params.min_tokens:
        banned.update(eos_token_ids)
        banned.update(seq.params.stop_token_ids)
    return banned


def _temperatures(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Each row's temperature; dynamic rows scale between their bounds by the normalised entropy of
    their distribution at temperature 1, computed for all of them at once on the device."""
    device, dtype = logits.device, logits.dtype
    fixed = to_device([s.params.temperature for s in seqs], dtype, device)
    dynamic = [i for i, s in enumerate(seqs) if s.params.dynamic_temperature]
    if not dynamic:
        return fixed
    rows = to_device(dynamic, torch.long, device)
    logp = torch.log_softmax(logits[rows], dim=-1)
    normalized = torch.special.entr(logp.exp()).sum(dim=-1) / math.log(logits.shape[-1])  # 0 at masked (-inf) logits
    low = to_device([seqs[i].params.min_temperature for i in dynamic], dtype, device)
    high = to_device([seqs[i].params.max_temperature for i in dynamic], dtype, device)
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
    k = to_device([k if k > 0 else probs.shape[1] for k in top_k], torch.long, probs.device).unsqueeze(1)
    keep = ranks < k
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep &= mass_before < to_device(top_p, probs.dtype, probs.device).unsqueeze(1)
    threshold = sorted_probs[:, :1] * to_device(min_p, probs.dtype, probs.device).unsqueeze(1)
    keep &= sorted_probs >= threshold
    keep[:, 0] = True
    filtered = torch.zeros_like(probs).scatter(1, order, sorted_probs * keep)
    return filtered
