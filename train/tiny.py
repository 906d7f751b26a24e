"""A tiny Mistral-architecture model and a tokenizer trained on the spot, saved like a real one.

Used by the tests and by `make demo` (`ctl train make-tiny-model OUT`): same code path as a 7B
model (save_pretrained folder, 4-bit load, LoRA), small enough to train on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)

_WORDS = (
    "the run writes a checkpoint before the spot box goes away and resumes from the last step "
    "loss falls when the adapter learns the pattern of short policy notes about water grids "
    "solar tariffs budget lines and the watcher tells a human on slack with a cause and a fix"
).split()


def default_corpus(n: int = 400) -> Iterator[str]:
    """Deterministic filler text: enough variety to train a 500-token BPE vocabulary."""
    for i in range(n):
        k = len(_WORDS)
        yield " ".join(_WORDS[(i * 7 + j * (i % 5 + 1)) % k] for j in range(12 + i % 9)) + f" note {i}."


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer wrapped as a fast HF tokenizer that adds <s> like Mistral's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(out: str | Path, corpus: Iterable[str] | None = None, *, hidden: int = 64, layers: int = 2,
                    vocab_size: int = 512, max_positions: int = 1024, seed: int = 0,
                    init_range: float = 0.2) -> Path:
    """Write a tiny MistralForCausalLM + tokenizer to `out` (a normal save_pretrained folder)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(corpus if corpus is not None else default_corpus(), vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=max_positions,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, sliding_window=None, initializer_range=init_range,
    )
    model = MistralForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
