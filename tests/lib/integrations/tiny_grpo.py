"""A GRPO run TRL can train on the CPU in seconds: a one-layer GPT-2 with random weights and a
word-level tokenizer built here (no download), two reward functions (one sometimes returning
None), weights 1 and 0.5. Used by the TRL callback tests and by ``record_trl_logs``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROMPTS = [
    "what is one plus two ?",
    "what is two plus two ?",
    "what is three minus one ?",
    "what is four plus one ?",
]


def has_four(completions: list[Any], **kwargs: Any) -> list[float]:
    return [1.0 if "four" in str(c) else 0.0 for c in completions]


def short(completions: list[Any], **kwargs: Any) -> list[float | None]:
    return [None if i % 3 == 0 else -len(str(c)) / 10 for i, c in enumerate(completions)]


def tiny_trainer(output_dir: Path, callbacks: list[Any], *, steps: int = 4) -> Any:
    """A GRPOTrainer: 4 prompts x 2 generations per step, one generation per 2 steps."""
    from datasets import Dataset
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    words = " ".join(PROMPTS) + " five the answer is ."
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(
        [words], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"])
    )
    processing = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="[EOS]",
        padding_side="left",
    )
    config = GPT2Config(
        vocab_size=len(processing),
        n_positions=64,
        n_embd=16,
        n_layer=1,
        n_head=2,
        pad_token_id=processing.pad_token_id,
        eos_token_id=processing.eos_token_id,
        bos_token_id=processing.eos_token_id,
    )
    args = GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        steps_per_generation=2,
        num_generations=2,
        max_completion_length=4,
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        learning_rate=1e-3,
        reward_weights=[1.0, 0.5],
        seed=3,
    )
    return GRPOTrainer(
        model=GPT2LMHeadModel(config),
        processing_class=processing,
        reward_funcs=[has_four, short],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
        callbacks=callbacks,
    )
