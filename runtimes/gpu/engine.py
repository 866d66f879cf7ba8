"""The step loop: schedule, build the flat batch, run the model, sample, finish what is done.

``add`` queues a request and ``step`` advances every running request by one model call, returning what each
produced; ``generate`` is the offline batch API (evaluation, data synthesis) on top of it; ``score`` prefills whole
prompts and returns the log-probabilities of their tails (likelihood evaluation). The engine is single-threaded by
design; the ChatModel wrapper owns the thread that drives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hanlin.kernels import kv_quant, use_triton
from hanlin.runtimes.gpu.block_manager import BlockManager
from hanlin.runtimes.gpu.config import ModelConfig
from hanlin.runtimes.gpu.cuda_graphs import DecodeGraphs
from hanlin.runtimes.gpu.layers import Ops, StepBatch
from hanlin.runtimes.gpu.model import DecoderLM
from hanlin.runtimes.gpu.scheduler import Scheduled, Scheduler
from hanlin.runtimes.gpu.sequence import SamplingParams, Sequence, Status
from hanlin.runtimes.sampling import ReplyCounts, new_generator, penalize, sample


@dataclass(slots=True)
class StepOutput:
    seq_id: int
    token: int | None  # None: the step only advanced a prefill chunk
    finished: bool
    finish_reason: str | None = None


class Engine:
    def __init__(self, folder: str | Path, *, device: str = "auto", dtype: str | None = None, block_size: int = 16,
                 num_blocks: int | None = None, cache_memory: int | str | None = None, memory_fraction: float = 0.85,
                 max_batch_tokens: int = 2048, max_seqs: int = 256, kernels: str = "auto",
                 decode_graphs: str = "auto", max_model_len: int | None = None, kv_cache_dtype: str = "auto") -> None:
        """The KV cache is ``num_blocks`` blocks, or ``cache_memory`` bytes ("4GiB", "512MB" or an int), or else
        ``memory_fraction`` of the device memory free once the weights are loaded, less a step's workspace (the
        activations of the largest prefill chunk and of the captured decode graphs), 512 MiB on CPU.
        ``decode_graphs``: "auto" captures CUDA graphs for decode batches on a GPU with Triton kernels; "off";
        "eager" runs the same padded static-buffer path without capturing (how CPU tests check it).
        ``max_model_len`` caps prompt + new tokens below the checkpoint's positions (Qwen2.5's 32k): the captured
        decode attention's grid is sized for it, so a workload of 2k-token requests does not launch 16x the
        programs it needs at every step. ``kv_cache_dtype``: "auto" (the model's dtype) or "int8" (per-head
        per-token asymmetric, hanlin.kernels.kv_quant: about twice the tokens in the same memory)."""
        if kv_cache_dtype not in ("auto", "int8"):
            raise ValueError(f"kv_cache_dtype must be 'auto' or 'int8', got {kv_cache_dtype!r}")
        if not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
        if num_blocks is not None and cache_memory is not None:
            raise ValueError("give num_blocks or cache_memory, not both")
        for name, value in (("block_size", block_size), ("max_batch_tokens", max_batch_tokens), ("max_seqs", max_seqs),
                            ("max_model_len", 1 if max_model_len is None else max_model_len)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        folder = Path(folder)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        on_gpu = self.device.type == "cuda"
        if dtype is None:
            dtype = "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be 'float32', 'float16' or 'bfloat16', got {dtype!r}")
        self.dtype = getattr(torch, dtype)
        if kernels not in ("auto", "triton", "torch"):
            raise ValueError(f"kernels must be 'auto', 'triton' or 'torch', got {kernels!r}")
        if decode_graphs not in ("auto", "off", "eager", "capture"):
            raise ValueError(f"decode_graphs must be 'auto', 'off', 'eager' or 'capture', got {decode_graphs!r}")
        probe = torch.empty(0, device=self.device)
        triton = use_triton(probe) if kernels == "auto" and on_gpu else kernels == "triton"
        check_block_size(block_size, triton)
        self.config = ModelConfig.from_folder(folder)
        self.model = DecoderLM(self.config, folder, self.device, self.dtype, Ops(triton))
        c = self.config
        if max_model_len is not None and max_model_len > c.max_position:
            raise ValueError(f"max_model_len {max_model_len} is past the model's {c.max_position} positions")
        self.max_model_len = max_model_len or c.max_position
        graphs = decode_graphs if decode_graphs != "auto" else ("capture" if on_gpu and triton else "off")
        row_bytes = c.head_dim * self.dtype.itemsize if kv_cache_dtype == "auto" else kv_quant.cache_shape(1, 1, 1, c.head_dim)[-1]
        per_block = 2 * c.num_layers * block_size * c.num_kv_heads * row_bytes
        if cache_memory is not None:
            num_blocks = parse_bytes(cache_memory) // per_block
        if num_blocks is None:
            if on_gpu:
                free, _ = torch.cuda.mem_get_info(self.device)
                reserve = _workspace_bytes(c, max(max_batch_tokens, max_seqs), self.dtype.itemsize)
                num_blocks = int(max(free - reserve, 0) * memory_fraction) // per_block
            else:
                num_blocks = max(64, (512 << 20) // per_block)  # 512 MiB of cache on CPU
        if num_blocks < 2:
            raise ValueError(f"the KV cache would hold {num_blocks} blocks of {block_size} tokens ({per_block} bytes "
                             "each); give it more memory (num_blocks, cache_memory or memory_fraction)")
        shape = (num_blocks, block_size, c.num_kv_heads, c.head_dim)
        kv_dtype = self.dtype
        if kv_cache_dtype == "int8":  # uint8 rows: codes then fp16 scale and offset (hanlin.kernels.kv_quant)
            shape, kv_dtype = kv_quant.cache_shape(*shape), torch.uint8
        self.kv = [(torch.zeros(shape, dtype=kv_dtype, device=self.device),
                    torch.zeros(shape, dtype=kv_dtype, device=self.device)) for _ in range(c.num_layers)]
        # CUDA graphs pad batches with rows that write into a scratch block the allocator never hands out
        usable = num_blocks - 1 if graphs != "off" else num_blocks
        self.blocks = BlockManager(usable, block_size)
        self.scheduler = Scheduler(self.blocks, max_batch_tokens, max_seqs)
        self.graphs: DecodeGraphs | None = None
        if graphs != "off":
            width = min(-(-self.max_model_len // block_size), usable)
            self.graphs = DecodeGraphs(self.model, self.kv, max_seqs=max_seqs, max_blocks_per_seq=width,
                                       block_size=block_size, scratch_slot=usable * block_size,
                                       capture=graphs == "capture")
        self.seqs: dict[int, Sequence] = {}
        self.last_cached: dict[int, int] = {}  # finished seq -> prompt tokens it took from the prefix cache

    # ---- requests ---------------------------------------------------------------------------
    def add(self, prompt: list[int], params: SamplingParams | None = None) -> int:
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        params = params or SamplingParams()
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise ValueError(f"{len(prompt)} prompt + {params.max_tokens} new tokens exceed the engine's "
                             f"{self.max_model_len} positions (max_model_len)")
        seq = Sequence(prompt_len=len(prompt), tokens=list(prompt), params=params)
        if params.grammar is not None:
            import xgrammar

            seq.matcher = xgrammar.GrammarMatcher(params.grammar)
        self.scheduler.add(seq)
        self.seqs[seq.id] = seq
        return seq.id

    def abort(self, seq_id: int) -> None:
        seq = self.seqs.pop(seq_id, None)
        if seq is not None and seq.status is not Status.FINISHED:
            self.scheduler.finish(seq, "abort")

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ---- one step ---------------------------------------------------------------------------
    def _flat_batch(self, parts: list[tuple[list[int], int, list[int], range]]) -> StepBatch:
        """The one builder of a model call's input. Each part is a sequence's new tokens, the position of the first,
        its block table and which of its new tokens' logits are wanted (relative indexes), back to back."""
        bs = self.blocks.block_size
        ids, pos, slots, cu, lens, rows = [], [], [], [0], [], []
        tables = torch.zeros(len(parts), max(len(blocks) for _, _, blocks, _ in parts), dtype=torch.int32)
        for b, (tokens, start, blocks, wanted) in enumerate(parts):
            ids += tokens
            pos += range(start, start + len(tokens))
            slots += [blocks[p // bs] * bs + p % bs for p in range(start, start + len(tokens))]
            rows += [cu[-1] + r for r in wanted]
            cu.append(cu[-1] + len(tokens))
            lens.append(start + len(tokens))
            tables[b, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        dev = self.device

        def t(x: list[int], dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.tensor(x, dtype=dtype, device=dev)

        return StepBatch(input_ids=t(ids), positions=t(pos), slots=t(slots), cu_seqlens_q=t(cu, torch.int32),
                         context_lens=t(lens, torch.int32), block_tables=tables.to(dev),
                         decode_only=all(len(tokens) == 1 for tokens, _, _, _ in parts), logits_rows=t(rows))

    def _batch(self, items: list[Scheduled]) -> tuple[StepBatch, list[Sequence]]:
        """A step's batch; a sequence whose chunk reaches its last token is sampled from that token's logits."""
        parts, sampled = [], []
        for it in items:
            s, start, n = it.seq, it.seq.num_computed, it.num_tokens
            last = start + n == len(s.tokens)
            parts.append((s.tokens[start : start + n], start, s.blocks, range(n - 1, n) if last else range(0)))
            if last:
                sampled.append(s)
        return self._flat_batch(parts), sampled

    def step(self) -> list[StepOutput]:
        items = self.scheduler.schedule()
        if not items:
            return []
        batch, sampled = self._batch(items)
        if self.graphs is not None and self.graphs.fits(batch):
            logits = self.graphs.run(batch)
        else:
            logits = self.model.forward(batch, self.kv)
        for it in items:
            self.scheduler.computed(it)
        outputs: list[StepOutput] = []
        if any(s.matcher is not None for s in sampled):
            _mask(logits, sampled)
        new_tokens = _sample(logits, sampled) if sampled else []
        done_ids = {s.id for s in sampled}
        for seq, token in zip(sampled, new_tokens):
            seq.tokens.append(token)
            p = seq.params
            reason = None
            if seq.matcher is not None and not seq.matcher.accept_token(token):
                reason = "stop"  # cannot happen under the mask; never let a broken matcher run on
            elif not p.ignore_eos and (token in p.stop_token_ids or token in self.config.eos_token_ids):
                reason = "stop"
            elif seq.matcher is not None and seq.matcher.is_terminated():
                reason = "stop"
            elif seq.num_generated >= p.max_tokens:
                reason = "length"
            if reason:
                self.last_cached[seq.id] = seq.cached_tokens
                self.scheduler.finish(seq, reason)
                self.seqs.pop(seq.id, None)
            outputs.append(StepOutput(seq.id, token, reason is not None, reason))
        outputs.extend(StepOutput(it.seq.id, None, False) for it in items if it.seq.id not in done_ids)
        return outputs

    # ---- offline batch ----------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None) -> list[list[int]]:
        """Generated tokens for each prompt (without the prompt), all requests batched together."""
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        ids = [self.add(p, sp) for p, sp in zip(prompts, plist)]
        results: dict[int, list[int]] = {i: [] for i in ids}
        while self.has_work():
            for out in self.step():
                if out.token is not None and out.seq_id in results:
                    results[out.seq_id].append(out.token)
        return [results[i] for i in ids]

    # ---- prompt scoring ---------------------------------------------------------------------
    def score(self, requests: list[tuple[list[int], int]], max_rows: int = 512) -> list[list[float]]:
        """For each (tokens, start): the log-probability of every token from ``start`` on, given those before it.

        Whole prompts are prefilled together in flat batches of at most ``max_batch_tokens`` tokens and ``max_rows``
        logits rows (only the rows that predict a scored token reach the LM head), on KV blocks taken for the
        batch and given back unhashed. The prefix cache is neither used nor disturbed: a batch takes only free
        blocks that hold no cached prefix (more, smaller batches when those are few); only a single request larger
        than all of them evicts cached blocks. Call it between steps, from the thread that drives the engine."""
        for tokens, start in requests:
            if not 1 <= start < len(tokens):
                raise ValueError(f"start {start} must leave at least one token before and one after it "
                                 f"(a request of {len(tokens)} tokens)")
            if len(tokens) > self.max_model_len:
                raise ValueError(f"a request of {len(tokens)} tokens exceeds the engine's "
                                 f"{self.max_model_len} positions (max_model_len)")
        out: list[list[float]] = []
        batch: list[tuple[list[int], int]] = []
        used = rows = 0
        for tokens, start in requests:
            n, r = len(tokens), len(tokens) - start
            if batch and (used + n > self.scheduler.max_batch_tokens or rows + r > max_rows
                          or self._blocks_needed([*batch, (tokens, start)]) > self.blocks.num_uncached_free):
                out += self._score_batch(batch)
                batch, used, rows = [], 0, 0
            batch.append((tokens, start))
            used, rows = used + n, rows + r
        if batch:
            out += self._score_batch(batch)
        return out

    def _blocks_needed(self, batch: list[tuple[list[int], int]]) -> int:
        return sum(-(-len(tokens) // self.blocks.block_size) for tokens, _ in batch)

    def _score_batch(self, batch: list[tuple[list[int], int]]) -> list[list[float]]:
        if self._blocks_needed(batch) > self.blocks.num_free:
            raise RuntimeError(f"scoring {len(batch[0][0])} tokens needs {self._blocks_needed(batch)} KV blocks but "
                               f"only {self.blocks.num_free} are free; give the cache more memory (num_blocks)")
        bs = self.blocks.block_size
        tables = [[self.blocks.allocate() for _ in range(-(-len(tokens) // bs))] for tokens, _ in batch]
        try:
            step = self._flat_batch([(tokens, 0, blocks, range(start - 1, len(tokens) - 1))
                                     for (tokens, start), blocks in zip(batch, tables)])
            targets = torch.tensor([t for tokens, start in batch for t in tokens[start:]], device=self.device)
            logp = torch.log_softmax(self.model.forward(step, self.kv), dim=-1)
            flat = logp.gather(1, targets[:, None])[:, 0].tolist()
        finally:
            for blocks in tables:
                self.blocks.release(blocks)
        out, at = [], 0
        for tokens, start in batch:
            out.append(flat[at : at + len(tokens) - start])
            at += len(tokens) - start
        return out


def _workspace_bytes(c: ModelConfig, rows: int, itemsize: int) -> int:
    """What one step may allocate beside the weights and the cache, for ``rows`` tokens (the larger of a prefill
    chunk and a decode batch; the captured graphs share one pool sized by their largest batch): the fp32 logits,
    the MLP's gate/up, the residual stream, q/k/v and attention scratch, twice over for the allocator's slack."""
    per_row = 4 * c.vocab_size + itemsize * (3 * c.intermediate_size + 8 * c.hidden_size
                                             + 4 * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim)
    return 2 * rows * per_row + (256 << 20)


def check_block_size(block_size: int, triton: bool) -> None:
    """Refuse at construction what the kernels would refuse at the first prefill, deep inside a shared step."""
    if block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two (the attention kernels tile a block with tl.arange), "
                         f"got {block_size}; use 16 or 32")
    if triton and block_size < 16:
        raise ValueError(f"block_size must be at least 16 with the Triton kernels (the prefill kernel's tl.dot needs "
                         f"16-row tiles), got {block_size}; use 16 or 32 (smaller blocks only with kernels='torch')")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(size: int | str) -> int:
    """4096, "512MiB", "2 GiB", "1.5GB" -> bytes."""
    if isinstance(size, int) and size > 0:
        return size
    text = str(size).strip().lower().replace(" ", "")
    number = text.rstrip("kmgib")
    unit = text[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value <= 0:
        raise ValueError(f"cache_memory must be a positive size such as 4GiB, 512MB or a number of bytes, got {size!r}")
    return int(value * _UNITS[unit])


def _sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """Each sequence's next token, drawn on the device with its own generator (kept across preemption, so a seed
    gives the same tokens whatever shares the batch); one host read for the whole batch."""
    for seq in seqs:
        if seq.params.temperature > 0 and seq.generator is None:
            seq.generator = new_generator(logits.device, seq.params.seed)
    ps = [seq.params for seq in seqs]
    if any(p.frequency_penalty or p.presence_penalty for p in ps):
        logits = penalize(logits, [_reply_counts(seq, logits) for seq in seqs], [p.frequency_penalty for p in ps],
                          [p.presence_penalty for p in ps])
    return sample(logits, [p.temperature for p in ps], [p.top_k for p in ps], [p.top_p for p in ps],
                  [p.min_p for p in ps], [seq.generator for seq in seqs]).tolist()


def _reply_counts(seq: Sequence, logits: torch.Tensor) -> torch.Tensor | None:
    """A penalized sequence's token counts on the device, kept with the sequence (across preemption too) and
    brought up to date with the tokens written since its last step."""
    if not (seq.params.frequency_penalty or seq.params.presence_penalty):
        return None
    if seq.reply_counts is None:
        seq.reply_counts = ReplyCounts()
    return seq.reply_counts.of(seq.tokens, seq.prompt_len, logits.shape[-1], logits.device)


def _mask(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """Constrained decoding: only tokens the sequence's grammar allows next keep their logits."""
    import xgrammar

    rows = [i for i, s in enumerate(seqs) if s.matcher is not None]
    bitmask = xgrammar.allocate_token_bitmask(len(seqs), logits.shape[-1])
    for i in rows:
        seqs[i].matcher.fill_next_token_bitmask(bitmask, i)
    xgrammar.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)
