"""A run's data, ready to batch: records read and checked, held-out split made, samples rendered, and the
micro-batches of any epoch rebuilt identically from (seed, epoch) so a resumed run continues the same order."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from hanlin.errors import ConfigurationError
from hanlin.plugins.finetuners.config import TuneConfig
from hanlin.plugins.finetuners.packing import Row, as_row, batches, epoch_order, rows_for_epoch, unpacked
from hanlin.plugins.finetuners.records import LoadedData, PreferenceRecord, RecordError, load_records
from hanlin.plugins.finetuners.render import IGNORE, PreferenceSample, Renderer, Sample


@dataclass
class RunData:
    config: TuneConfig
    samples: list[Sample] = field(default_factory=list)
    pairs: list[PreferenceSample] = field(default_factory=list)
    eval_samples: list[Sample] = field(default_factory=list)
    eval_pairs: list[PreferenceSample] = field(default_factory=list)
    loaded: LoadedData | None = None
    skipped_render: list[tuple[str, int, str]] = field(default_factory=list)
    templated: bool = True  # rendered through the chat template (False: the plain layout); exports keep the choice

    @property
    def preference(self) -> bool:
        return self.config.method == "dpo"

    def micro_batches(self, epoch: int) -> list[list[Row]]:
        """Every micro-batch of one epoch. DPO batches hold the chosen rows then the rejected rows of its pairs."""
        c = self.config
        if self.preference:
            order = epoch_order(len(self.pairs), c.seed, epoch)
            out = []
            for i in range(0, len(order), c.batch_size):
                group = [self.pairs[j] for j in order[i : i + c.batch_size]]
                out.append([pair_row(p, p.chosen_ids) for p in group] + [pair_row(p, p.rejected_ids) for p in group])
            return out
        rows = rows_for_epoch(self.samples, seed=c.seed, epoch=epoch, packing=c.packing, max_length=c.max_length)
        return list(batches(rows, c.batch_size))

    def eval_batches(self) -> list[list[Row]]:
        if self.preference:
            return [[pair_row(p, p.chosen_ids) for p in self.eval_pairs[i : i + self.config.batch_size]]
                    for i in range(0, len(self.eval_pairs), self.config.batch_size)]
        return list(batches(unpacked(self.eval_samples), self.config.batch_size))

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.micro_batches(0)) / self.config.grad_accum))

    def total_steps(self) -> int:
        c = self.config
        return c.max_steps or max(1, math.ceil(c.epochs * self.steps_per_epoch()))

    @property
    def n_train(self) -> int:
        return len(self.pairs) if self.preference else len(self.samples)


def pair_row(pair: PreferenceSample, reply: list[int]) -> Row:
    """prompt + reply as one row whose targets are the reply tokens only."""
    ids = pair.prompt_ids + reply
    labels = [IGNORE] * len(pair.prompt_ids) + reply
    return as_row([Sample(ids, labels, pair.where)])


def prepare(config: TuneConfig, tokenizer: Any, spec: Any = None) -> RunData:
    """Read, check, split and render everything before training starts, so bad data stops the run at step 0.
    ``spec`` (the base's ModelSpec) decides template or plain layout with the tokenizer, as serving does."""
    fmt = "preference" if config.method == "dpo" and config.format == "auto" else config.format
    loaded = load_records(config.data, format=fmt, skip_bad=config.skip_bad_records, keep_status=config.keep_status)
    records = loaded.records
    if config.method == "dpo" and not all(isinstance(r, PreferenceRecord) for r in records):
        raise ConfigurationError("method dpo needs preference records ({prompt, chosen, rejected}) in every file")
    if config.method != "dpo" and any(isinstance(r, PreferenceRecord) for r in records):
        raise ConfigurationError(f"preference records (prompt/chosen/rejected) need method: dpo, not {config.method}")
    renderer = Renderer(tokenizer, max_length=config.max_length, train_on=config.train_on, spec=spec)
    data = RunData(config, loaded=loaded, templated=renderer.use_template)
    order = list(range(len(records)))
    random.Random(config.seed).shuffle(order)
    n_eval = max(1, round(len(records) * config.eval_split)) if config.eval_split else 0
    if n_eval and n_eval >= len(records):
        raise ConfigurationError(f"eval_split {config.eval_split} leaves no training records out of {len(records)}")
    held_out = set(order[:n_eval])
    problems: list[tuple[str, int, str]] = []
    for index, record in enumerate(records):
        try:
            if config.method == "dpo":
                (data.eval_pairs if index in held_out else data.pairs).append(renderer.preference(record))
            else:
                (data.eval_samples if index in held_out else data.samples).extend(renderer.sample(record))
        except ConfigurationError as exc:
            name, _, line = record.where.partition(":")
            problems.append((name, int(line) if line.isdigit() else 0, str(exc).splitlines()[0]))
    if problems and not config.skip_bad_records:
        raise RecordError(problems)
    data.skipped_render = problems
    if data.n_train == 0:
        raise ConfigurationError("no training samples left after rendering; check max_length and the data")
    return data
