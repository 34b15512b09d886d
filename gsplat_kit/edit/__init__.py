"""Text-driven image editing on diffusers' Stable Diffusion: Prompt-to-Prompt controllers run by a fused
native attention kernel (gsplat_kit._C), real-image inversion and Plug-and-Play."""
from .controllers import (AttentionControl, AttentionRefine, AttentionReplace, AttentionReweight, AttentionStore,
                          LocalBlend, get_equalizer)
from .pipeline import Prompt2PromptOutput, Prompt2PromptPipeline
from .processor import P2PAttnProcessor, UnsupportedModelError, register_attention_control

__all__ = ["AttentionControl", "AttentionRefine", "AttentionReplace", "AttentionReweight", "AttentionStore",
           "LocalBlend", "get_equalizer", "Prompt2PromptOutput", "Prompt2PromptPipeline", "P2PAttnProcessor",
           "UnsupportedModelError", "register_attention_control"]
