"""A tiny random Llama with an in-process BPE tokenizer and a plain chat template, for the local chat backend.

    from tiny_chat_model import build_tiny_chat_model
    model, tokenizer = build_tiny_chat_model()
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from transformers_llava.demo.tiny import BASE_CORPUS, train_tokenizer

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def build_tiny_chat_model(seed: int = 0):
    tokenizer = train_tokenizer(BASE_CORPUS, vocab_size=300)
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ))
    return model, tokenizer
