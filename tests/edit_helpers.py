"""A tiny Stable Diffusion built in code (diffusers' own test recipe, random weights, no hub) for the
edit tests: a CLIP tokenizer from an in-memory vocabulary in which WORDS are single tokens and any
other word splits into one token per letter."""
from __future__ import annotations

import torch

WORDS = ["a", "cat", "dog", "tiger", "photo", "of", "red", "big", "house", "smiling", "on", "the", "table",
         "mirror", "next", "to", "in", "garden", "bird", "car"]


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}

    def add(t):
        vocab.setdefault(t, len(vocab))

    for c in "abcdefghijklmnopqrstuvwxyz":
        add(c)
        add(c + "</w>")
    merges = []  # transformers 5 wants merges as (left, right) tuples
    for w in WORDS:
        cur = w[0]
        for i in range(1, len(w)):
            nxt = w[i] + ("</w>" if i == len(w) - 1 else "")
            merges.append((cur, nxt))
            cur += nxt
            add(cur)
        if len(w) == 1:
            add(w + "</w>")
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    for w in WORDS:  # the fixture's promise: each chosen word is one token
        assert len(tok(w).input_ids) == 3, (w, tok(w).input_ids)
    return tok


def tiny_sd(seed: int = 0, conv_out_scale: float = 1.0, scheduler: str = "ddim"):
    """A StableDiffusionPipeline small enough for CPU tests: latent 16x16 for 32x32 images, cross- and
    self-attention at 16x16 and 8x8 (8 heads of 4 and 8 channels). conv_out_scale < 1 damps the UNet's
    random output so that DDIM inversion round trips are meaningful."""
    from diffusers import (AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        norm_num_groups=16, attention_head_dim=8,
    )
    with torch.no_grad():
        unet.conv_out.weight.mul_(conv_out_scale)
        unet.conv_out.bias.mul_(conv_out_scale)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=16)
    tok = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-5,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tok.get_vocab()) + 8, max_position_embeddings=77,
    ))
    kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    sched = (DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **kw) if scheduler == "ddim"
             else PNDMScheduler(skip_prk_steps=True, **kw))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float32)
