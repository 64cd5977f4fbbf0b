"""Inference engine: chunked prefill (public MSA ops with Nq < Nk), sparse decode, overflow policies.

A prefill checks its memory estimate first (cache.py) and refuses with PrefillTooLarge; a model with a
hard context limit (dense-200k) raises ContextTooLong unless an overflow policy is chosen:
  "error"            raise ContextTooLong (default);
  "truncate_left"    keep BOS and the most recent tokens;
  "truncate_middle"  keep BOS, the head and the tail, drop the middle;
  "chunk"            split the input into windows that each fit with the question (the prompt's tail)
                     appended, answer each window, return the answer with the best mean log-prob.
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from .cache import KVCache, PrefillTooLarge, available_memory, check_prefill, estimate_prefill  # noqa: F401
from .net import MSATransformer
from .tokens import BOS, EOS, Encoded, decode

OVERFLOW_POLICIES = ("error", "truncate_left", "truncate_middle", "chunk")


def writable_tokens(vocab_size: int, device=None) -> torch.Tensor:
    """bool [vocab_size]: the ids decoding may produce, the 256 bytes and EOS."""
    ok = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    ok[:256] = True
    ok[EOS] = True
    return ok


class ContextTooLong(ValueError):
    """Input + new tokens exceed the model's hard context limit."""

    def __init__(self, n_tokens: int, limit: int, max_new_tokens: int, model: str = "model"):
        self.n_tokens, self.limit, self.max_new_tokens = n_tokens, limit, max_new_tokens
        super().__init__(
            f"{model} has a hard limit of {limit:,} tokens but the input is {n_tokens:,} tokens "
            f"+ {max_new_tokens} new tokens. Options: overflow='truncate_left' (keep the most recent "
            f"{limit - max_new_tokens:,} tokens), overflow='truncate_middle' (keep the head and the tail), "
            f"overflow='chunk' (answer each {limit:,}-token window and keep the most confident answer), "
            f"or use msa-tiny (no hard limit)."
        )


@dataclass
class PrefillStep:
    """One chunk of a chunked prefill.

    selection_hist: int64 [L, Hkv, key_bins] — how often this chunk's queries selected a key block in each
    bin (bins of ``blocks_per_bin`` blocks over the final length); None for dense models.
    last_selected: int32 [L, Hkv, top_k] — the blocks selected for the chunk's last token (-1 padded).
    logits: float32 [vocab], the next-token logits after this chunk (batch row 0).
    """

    chunk: int
    n_chunks: int
    tokens_done: int
    total_tokens: int
    seconds: float
    elapsed_s: float
    tokens_per_s: float
    mem_allocated_bytes: int
    mem_peak_bytes: int
    mem_source: str
    cache_bytes: int
    blocks_per_bin: int
    selection_hist: Optional[np.ndarray]
    last_selected: Optional[np.ndarray]
    logits: torch.Tensor = field(repr=False)


@dataclass
class GenerationResult:
    text: str
    ids: List[int]
    mean_logprob: float
    policy: str = "none"
    input_tokens: int = 0
    used_tokens: int = 0  # tokens actually fed (after truncation) or per window (chunk)
    windows: int = 1
    chosen_window: int = 0


def whole_image_embeds(net: MSATransformer, enc: Encoded, device) -> Optional[torch.Tensor]:
    """The patch embeddings [P, d] of the whole input where the model has a vision encoder (None otherwise):
    chunks then take their rows, so an image cut by a chunk boundary is still encoded whole."""
    if net.vision is None or enc.patches.shape[0] == 0:
        return None
    with torch.no_grad():
        return net.embed_patches(enc.patches.to(device), enc.patch_slot.to(device))


def _memory(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device), "cuda"
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * resource.getpagesize()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; updated lazily by the kernel
    return rss, max(rss, peak), "process RSS (peak since process start)"


class Engine:
    """Runs an MSATransformer over encoded prompts with a KV + index-key cache."""

    def __init__(self, net: MSATransformer):
        self.net = net
        self.cfg = net.cfg

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    # ------------------------------------------------------------------ memory
    def estimate(self, n_tokens: int, chunk_size: int, *, extra_tokens: int = 0, max_memory_bytes=None):
        """MemoryEstimate of a prefill (cache for n_tokens + extra_tokens, one chunk's activations)."""
        budget, source = available_memory(self.device, max_memory_bytes)
        wbytes = sum(p.numel() * p.element_size() for p in self.net.parameters())
        return estimate_prefill(self.cfg, n_tokens, chunk_size, extra_tokens=extra_tokens,
                                dtype_bytes=self.dtype.itemsize, weight_bytes=wbytes,
                                budget_bytes=budget, budget_source=source)

    def _check_limit(self, n_tokens: int, max_new_tokens: int = 0) -> None:
        lim = self.cfg.max_context
        if lim is not None and n_tokens + max_new_tokens > lim:
            raise ContextTooLong(n_tokens, lim, max_new_tokens, self.cfg.name)

    def new_cache(self, capacity: int, batch: int = 1) -> KVCache:
        return KVCache(self.cfg, batch, capacity, self.device, self.dtype)

    # ------------------------------------------------------------------ prefill
    @torch.no_grad()
    def prefill_steps(self, enc: Encoded, chunk_size: int = 2048, *, cache: Optional[KVCache] = None,
                      extra_tokens: int = 0, max_memory_bytes: Optional[int] = None, key_bins: int = 64,
                      check_memory: bool = True) -> Iterator[PrefillStep]:
        """Feed ``enc`` in chunks of chunk_size tokens, yielding a PrefillStep per chunk.

        extra_tokens: room reserved in the cache for decoding afterwards. The cache ends up in
        ``self.last_cache`` (or the ``cache`` passed in, which is extended).
        """
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        n = len(enc)
        if n == 0:
            raise ValueError("nothing to prefill: the encoded input is empty.")
        start = cache.length if cache is not None else 0
        self._check_limit(start + n, extra_tokens)
        if check_memory:
            check_prefill(self.estimate(start + n, chunk_size, extra_tokens=extra_tokens,
                                        max_memory_bytes=max_memory_bytes),
                          self.cfg, extra_tokens=extra_tokens, dtype_bytes=self.dtype.itemsize)
        if cache is None:
            cache = self.new_cache(n + extra_tokens)
        self.last_cache = cache
        dev = self.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        nb_total = self.cfg.msa_config().num_blocks(start + n)
        per_bin = max(1, math.ceil(nb_total / key_bins))
        n_bins = math.ceil(nb_total / per_bin)
        n_chunks = math.ceil(n / chunk_size)
        t_start = time.perf_counter()
        embeds = whole_image_embeds(self.net, enc, dev)
        for c in range(n_chunks):
            c0, c1 = c * chunk_size, min(n, (c + 1) * chunk_size)
            piece = enc.slice(c0, c1)
            sel: List[torch.Tensor] = []
            record = (lambda layer, idx=None, **_: sel.append(idx)) if self.cfg.sparse else None
            t0 = time.perf_counter()
            logits = self.net(piece.ids[None].to(dev), piece.patches.to(dev), piece.patch_slot.to(dev),
                              caches=cache, record=record, last_only=True,
                              patch_embeds=None if embeds is None else embeds[slice(*enc.patch_range(c0, c1))])
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t0
            alloc, peak, src = _memory(dev)
            hist = last = None
            if sel:
                idx = torch.stack([s[0] for s in sel]).long().cpu()  # [L, Hkv, C, top_k]
                last = idx[:, :, -1].int().numpy()
                b = torch.where(idx >= 0, idx // per_bin, n_bins)  # -1 padding -> spare bin
                L, G = idx.shape[:2]
                flat = (torch.arange(L * G).view(L, G, 1, 1) * (n_bins + 1) + b).flatten()
                hist = torch.bincount(flat, minlength=L * G * (n_bins + 1)).view(L, G, n_bins + 1)[..., :n_bins]
                hist = hist.numpy()
            yield PrefillStep(
                chunk=c, n_chunks=n_chunks, tokens_done=cache.length, total_tokens=start + n, seconds=dt,
                elapsed_s=time.perf_counter() - t_start, tokens_per_s=piece.ids.numel() / max(dt, 1e-9),
                mem_allocated_bytes=alloc, mem_peak_bytes=peak, mem_source=src, cache_bytes=cache.nbytes(),
                blocks_per_bin=per_bin, selection_hist=hist, last_selected=last, logits=logits[0].float().cpu(),
            )

    def prefill(self, enc: Encoded, chunk_size: int = 2048, **kw):
        """(cache, logits float32 [vocab] of the last position)."""
        step = None
        for step in self.prefill_steps(enc, chunk_size, **kw):
            pass
        return self.last_cache, step.logits

    # ------------------------------------------------------------------ decode
    @torch.no_grad()
    def decode_step(self, cache: KVCache, token: int, record=None) -> torch.Tensor:
        """Append one token (sparse decode, Nq = 1) -> next-token logits float32 [vocab].

        record: optional callback(layer, q=, k=, idx=) per layer, as in MSATransformer.forward."""
        self._check_limit(cache.length + 1)
        ids = torch.tensor([[token]], device=self.device)
        return self.net(ids, caches=cache, record=record, last_only=True)[0].float().cpu()

    def decode_from(self, cache: KVCache, logits: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                    seed: int = 0, record=None) -> Tuple[List[int], float]:
        """Decode after a prefill already in ``cache`` (logits: its last next-token logits) until EOS or
        max_new_tokens -> (token ids without EOS, summed log-prob of the sampled tokens incl. EOS)."""
        gen = torch.Generator().manual_seed(seed)
        out: List[int] = []
        logp = 0.0
        # the model writes bytes and EOS only: a special such as IMG_PATCH fed back would need pixels it has not
        # got (no answer in training holds one, but an odd input can still make one the likeliest token)
        unwritable = ~writable_tokens(logits.shape[-1], logits.device)
        for i in range(max_new_tokens):
            logits = logits.masked_fill(unwritable, float("-inf"))
            tok = self._sample(logits, temperature, gen)
            logp += float(torch.log_softmax(logits, -1)[tok])
            if tok == EOS:
                break
            out.append(tok)
            if i + 1 < max_new_tokens:
                logits = self.decode_step(cache, tok, record)
        return out, logp

    def _sample(self, logits: torch.Tensor, temperature: float, gen) -> int:
        if temperature <= 0:
            return int(logits.argmax())
        return int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))

    def generate_ids(self, enc: Encoded, max_new_tokens: int, *, chunk_size: int = 2048, temperature: float = 0.0,
                     seed: int = 0, max_memory_bytes: Optional[int] = None) -> GenerationResult:
        """Prefill ``enc`` (BOS + prompt + SEP) then decode until EOS or max_new_tokens."""
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        cache, logits = self.prefill(enc, chunk_size, extra_tokens=max_new_tokens, max_memory_bytes=max_memory_bytes)
        out, logp = self.decode_from(cache, logits, max_new_tokens, temperature=temperature, seed=seed)
        n = max(1, len(out) + (1 if len(out) < max_new_tokens else 0))
        return GenerationResult(decode(out), out, logp / n, input_tokens=len(enc), used_tokens=len(enc))

    # ------------------------------------------------------------------ overflow
    def generate(self, enc: Encoded, max_new_tokens: int, *, overflow: str = "error", tail_tokens: int = 1024,
                 **kw) -> GenerationResult:
        """generate_ids with the model's context limit enforced by ``overflow`` (see the module docstring)."""
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"unknown overflow policy {overflow!r}; choose one of {', '.join(OVERFLOW_POLICIES)}.")
        lim, n = self.cfg.max_context, len(enc)
        if lim is None or n + max_new_tokens <= lim:
            return self.generate_ids(enc, max_new_tokens, **kw)
        if overflow == "error":
            raise ContextTooLong(n, lim, max_new_tokens, self.cfg.name)
        keep = lim - max_new_tokens
        if keep < 2:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for input in {lim} tokens; lower it.")
        if overflow == "truncate_left":
            used = enc.slice(0, 1).cat(enc.slice(n - (keep - 1), n))
        elif overflow == "truncate_middle":
            head = keep // 2
            used = enc.slice(0, head).cat(enc.slice(n - (keep - head), n))
        else:
            return self._generate_chunked(enc, max_new_tokens, keep, tail_tokens, **kw)
        res = self.generate_ids(used, max_new_tokens, **kw)
        res.policy, res.input_tokens, res.used_tokens = overflow, n, len(used)
        return res

    def _generate_chunked(self, enc: Encoded, max_new_tokens: int, keep: int, tail_tokens: int, **kw):
        n = len(enc)
        tail = min(tail_tokens, keep // 4)  # the question sits at the end of the prompt
        window = keep - 1 - tail
        if enc.ids[0].item() != BOS:
            raise ValueError("overflow='chunk' expects an input that starts with BOS (use encode_prompt).")
        body, q = enc.slice(1, n - tail), enc.slice(n - tail, n)
        best, n_win = None, math.ceil(len(body) / window)
        for w in range(n_win):
            piece = enc.slice(0, 1).cat(body.slice(w * window, min(len(body), (w + 1) * window))).cat(q)
            res = self.generate_ids(piece, max_new_tokens, **kw)
            res.chosen_window = w
            if best is None or res.mean_logprob > best.mean_logprob:
                best = res
        best.policy, best.input_tokens, best.used_tokens, best.windows = "chunk", n, keep, n_win
        return best
