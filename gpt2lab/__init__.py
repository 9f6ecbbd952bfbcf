"""gpt2lab: pretrain GPT-2-class language models from scratch.

Everything the ``gpt2lab`` command does is a plain function or class here:

    from gpt2lab.config import load_config
    from gpt2lab.model import GPT, GPTConfig
    from gpt2lab.tokenizer import get_tokenizer
    from gpt2lab.train import train
"""

__version__ = "0.1.0"
