"""A tiny random causal LM (Llama architecture, like SmolLM2) with a 30-word tokenizer, for PPO and
generation tests. The vocabulary is small on purpose: a random model then samples each word often
enough that a synthetic reward (the count of one word) gives PPO a signal within a few iterations.
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "good bad cat dog the a is very and not house tree river car book music city water light road green blue small big"
).split()
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<system>", "<user>", "<assistant>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<system>", "<user>", "<assistant>"],
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_causal(path: Path, seed: int = 0, chat: bool = True) -> Path:
    """Save a 2-layer, 32-wide random LlamaForCausalLM and its tokenizer with save_pretrained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(chat)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def count_word_reward(word: str = "good"):
    """Synthetic reward model: how often `word` appears in the response (prompt ignored)."""

    def score(prompts: list, responses: list[str], finished: list[bool]) -> list[float]:
        return [float(text.split().count(word)) for text in responses]

    return score


PROMPTS = [
    "the cat is very small",
    [{"role": "user", "content": "a dog and a tree"}],
    "\n\nHuman: the river is blue\n\nAssistant: the river\n\nHuman: and the city\n\nAssistant:",
    "music",
    "a big green house and a small road",
    [{"role": "system", "content": "be good"}, {"role": "user", "content": "the book"}],
    "water and light",
    "the car is not very big and not small",
]
