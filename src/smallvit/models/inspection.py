"""Looking inside a trained ViT backbone: the attention weights of every block and the learned position embedding.

Like :mod:`smallvit.models.backbone`, this module knows timm's ViT internals: a block's attention
(``blocks[i].attn``: ``qkv``, ``q_norm``, ``k_norm``, ``scale``, ``num_heads``) and ``pos_embed`` with its prefix
tokens. timm's fused attention never materialises the softmax weights, so :func:`attention_weights` recomputes them
from each block's input, exactly as timm's unfused path does.

Example:
    >>> backbone = build_backbone("vit_lite", img_size=32, patch_size=4)
    >>> maps = attention_weights(backbone, torch.zeros(2, 3, 32, 32))   # 9 blocks of [2, 12, 65, 65]
    >>> patch_position_embedding(backbone).shape                        # [64, 192]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smallvit.models.backbone import ViTBackbone


def is_vit(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is a plain ViT (global attention over one token grid), which the functions here read."""
    return isinstance(backbone, ViTBackbone)


def prefix_tokens(backbone: ViTBackbone) -> int:
    """How many tokens (CLS, registers) come before the patch tokens in every block."""
    return backbone.model.num_prefix_tokens


@torch.no_grad()
def attention_weights(backbone: ViTBackbone, images: Tensor) -> list[Tensor]:
    """The softmax attention of every block for normalised ``images`` [B, C, H, W]: one [B, heads, T, T] tensor per
    block (float32), rows the queries, T all tokens with the :func:`prefix_tokens` first."""
    maps: list[Tensor] = []

    def capture(attn: nn.Module, args: tuple) -> None:
        x = args[0]
        batch, tokens, _ = x.shape
        qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        maps.append(((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1))

    hooks = [block.attn.register_forward_pre_hook(capture) for block in backbone.model.blocks]
    try:
        backbone(images)
    finally:
        for hook in hooks:
            hook.remove()
    return maps


def patch_position_embedding(backbone: nn.Module) -> Tensor | None:
    """The learned position embedding of the patch tokens, [h·w, D] row-major on the token grid (prefix tokens
    dropped); None when the backbone has none (a ViT built with ``pos_embed=False``, Swin, a CNN)."""
    if not is_vit(backbone) or backbone.model.pos_embed is None:
        return None
    vit = backbone.model
    embedding = vit.pos_embed[0].detach().float()
    return embedding if vit.no_embed_class else embedding[vit.num_prefix_tokens :]
