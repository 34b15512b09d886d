"""diffusers attention processors that run a controller's LayerPlan per layer, through the fused native
kernel (default) or the pure-PyTorch reference; plugged in with `unet.set_attn_processor`."""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from gsplat_kit.common.errors import UserError

from .controllers import AttentionControl, LayerInfo
from .kernel import fused_attention, reference_attention


class UnsupportedModelError(UserError):
    """The model is not a UNet whose attention layers this package can hook."""


class P2PAttnProcessor:
    """diffusers' AttnProcessor with the map computation handed to a controller's plan. Runs the
    reference path when gradients are needed (the kernel has no backward: null-text inversion) or an
    attention mask is given."""

    def __init__(self, controller: AttentionControl | None, layer: LayerInfo, fused: bool = True):
        self.controller = controller
        self.layer = layer
        self.fused = fused

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        B = query.shape[0] // attn.heads
        plan = None
        if self.controller is not None:
            plan = self.controller.layer_plan(self.layer, B, attn.heads, query.shape[1], key.shape[1], query.device,
                                              query.dtype)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        if self.fused and attention_mask is None and not needs_grad:
            hidden_states = fused_attention(query, key, value, attn.scale, attn.heads, plan)
        else:
            hidden_states = reference_attention(query, key, value, attn.scale, attn.heads, plan, attention_mask,
                                                upcast_softmax=attn.upcast_softmax)
        if self.controller is not None:
            self.controller.after_layer()
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def hookable_layers(unet) -> list[LayerInfo]:
    """The UNet's attention layers as LayerInfo; UnsupportedModelError for anything else."""
    if not isinstance(unet, UNet2DConditionModel):
        raise UnsupportedModelError(
            f"Prompt-to-Prompt needs a diffusers UNet2DConditionModel (Stable Diffusion 1.x / 2.x), got {type(unet).__name__}")
    layers = []
    for name in unet.attn_processors:
        module = unet.get_submodule(name[: -len(".processor")])
        place = name.split("_")[0] if name.split(".")[0] in ("down_blocks", "up_blocks", "mid_block") else None
        if place is None:
            continue
        layers.append(LayerInfo(name=name, place=place, is_cross=bool(getattr(module, "is_cross_attention", False))))
    if not any(layer.is_cross for layer in layers):
        raise UnsupportedModelError("the UNet has no cross-attention layers to hook: not a text-conditioned Stable Diffusion UNet")
    return layers


def register_attention_control(unet, controller: AttentionControl | None, fused: bool = True) -> list[LayerInfo]:
    """Installs one processor per attention layer (set_attn_processor); returns the hooked layers."""
    layers = hookable_layers(unet)
    names = {layer.name for layer in layers}
    procs = {}
    original = unet.attn_processors
    for name, proc in original.items():
        if name in names:
            layer = next(layer for layer in layers if layer.name == name)
            procs[name] = P2PAttnProcessor(controller, layer, fused=fused)
        else:
            procs[name] = proc
    unet.set_attn_processor(procs)
    if controller is not None:
        controller.num_att_layers = len(layers)
        if controller.latent_hw is None:
            s = unet.config.sample_size
            controller.latent_hw = (s, s) if isinstance(s, int) else tuple(s)
    return layers

