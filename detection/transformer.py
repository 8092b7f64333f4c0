"""DETR's encoder–decoder transformer: positional embeddings added to queries/keys at every
layer, post-norm (DETR default) or pre-norm, decoder outputs of every layer returned.

Module names mirror the official implementation (``encoder.layers.N.{self_attn, linear1,
linear2, norm1, norm2}``, ``decoder.layers.N.{self_attn, multihead_attn, linear1, linear2,
norm1, norm2, norm3}``, ``decoder.norm``), so an official state dict loads by name."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class _Residual(nn.Module):
    """Shared pieces of both layers: the FFN (linear1 → ReLU → linear2) and the norm placement."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, normalize_before: bool) -> None:
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def block(self, x: Tensor, norm: nn.LayerNorm, dropout: nn.Dropout, fn) -> Tensor:
        """``x + dropout(fn(norm(x)))`` (pre-norm) or ``norm(x + dropout(fn(x)))`` (post-norm)."""
        if self.normalize_before:
            return x + dropout(fn(norm(x)))
        return norm(x + dropout(fn(x)))


class EncoderLayer(_Residual):
    """Self-attention over the (B, HW, C) memory, keys padded where ``key_padding_mask`` is True."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool) -> None:
        super().__init__(d_model, dim_feedforward, dropout, normalize_before)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: Tensor, key_padding_mask: Tensor, pos: Tensor) -> Tensor:
        def attend(x: Tensor) -> Tensor:
            q = _with_pos(x, pos)
            return self.self_attn(q, q, x, key_padding_mask=key_padding_mask, need_weights=False)[0]

        src = self.block(src, self.norm1, self.dropout1, attend)
        return self.block(src, self.norm2, self.dropout2, self.ffn)


class DecoderLayer(_Residual):
    """Self-attention among queries, cross-attention (``multihead_attn``) to the memory, FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool) -> None:
        super().__init__(d_model, dim_feedforward, dropout, normalize_before)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        def self_attn(x: Tensor) -> Tensor:
            q = _with_pos(x, query_pos)
            return self.self_attn(q, q, x, need_weights=False)[0]

        def cross_attn(x: Tensor) -> Tensor:
            return self.multihead_attn(_with_pos(x, query_pos), _with_pos(memory, pos), memory,
                                       key_padding_mask=memory_mask, need_weights=False)[0]

        tgt = self.block(tgt, self.norm1, self.dropout1, self_attn)
        tgt = self.block(tgt, self.norm2, self.dropout2, cross_attn)
        return self.block(tgt, self.norm3, self.dropout3, self.ffn)


class _Stack(nn.Module):
    """``layers`` (N copies of one layer) and an optional final ``norm`` (official names)."""

    def __init__(self, layer: nn.Module, num_layers: int, norm: nn.Module | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm


class Transformer(nn.Module):
    """``forward(src (B, C, h, w), mask (B, h, w) True = padding, query_embed (Q, C), pos (B, C, h, w))``
    → decoder states of every layer (L, B, Q, C), each after the decoder's final LayerNorm."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, normalize_before: bool = False) -> None:
        super().__init__()
        enc = EncoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        dec = DecoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.encoder = _Stack(enc, num_encoder_layers, nn.LayerNorm(d_model) if normalize_before else None)
        self.decoder = _Stack(dec, num_decoder_layers, nn.LayerNorm(d_model))
        self.d_model = d_model
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor) -> Tensor:
        memory = rearrange(src, "b c h w -> b (h w) c")
        pos = rearrange(pos, "b c h w -> b (h w) c")
        mask = mask.flatten(1)
        for layer in self.encoder.layers:
            memory = layer(memory, mask, pos)
        if self.encoder.norm is not None:
            memory = self.encoder.norm(memory)
        query_pos = query_embed[None].expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        states = []
        for layer in self.decoder.layers:
            tgt = layer(tgt, memory, mask, pos, query_pos)
            states.append(self.decoder.norm(tgt))
        return torch.stack(states)
