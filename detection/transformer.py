"""DETR's encoder–decoder transformer: positional embeddings added to queries/keys at every
layer, post-norm (DETR default) or pre-norm, decoder outputs of every layer returned."""
from __future__ import annotations

import copy

import torch
from einops import rearrange
from torch import Tensor, nn


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class FeedForward(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(dim_feedforward, d_model), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """Self-attention over the (B, HW, C) memory, keys padded where ``key_padding_mask`` is True."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, src: Tensor, key_padding_mask: Tensor, pos: Tensor) -> Tensor:
        x = self.norm1(src) if self.normalize_before else src
        q = _with_pos(x, pos)
        src = src + self.dropout(self.self_attn(q, q, x, key_padding_mask=key_padding_mask, need_weights=False)[0])
        if not self.normalize_before:
            src = self.norm1(src)
        x = self.norm2(src) if self.normalize_before else src
        src = src + self.ffn(x)
        return src if self.normalize_before else self.norm2(src)


class DecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention to the memory, FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.dropouts = nn.ModuleList(nn.Dropout(dropout) for _ in range(2))
        self.normalize_before = normalize_before

    def _block(self, i: int, x: Tensor, fn) -> Tensor:
        if self.normalize_before:
            return x + fn(self.norms[i](x))
        return self.norms[i](x + fn(x))

    def forward(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        def self_attn(x: Tensor) -> Tensor:
            q = _with_pos(x, query_pos)
            return self.dropouts[0](self.self_attn(q, q, x, need_weights=False)[0])

        def cross_attn(x: Tensor) -> Tensor:
            out = self.cross_attn(_with_pos(x, query_pos), _with_pos(memory, pos), memory,
                                  key_padding_mask=memory_mask, need_weights=False)[0]
            return self.dropouts[1](out)

        tgt = self._block(0, tgt, self_attn)
        tgt = self._block(1, tgt, cross_attn)
        return self._block(2, tgt, self.ffn)


class Transformer(nn.Module):
    """``forward(src (B, C, h, w), mask (B, h, w) True = padding, query_embed (Q, C), pos (B, C, h, w))``
    → decoder states of every layer (L, B, Q, C), each after the decoder's final LayerNorm."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, normalize_before: bool = False) -> None:
        super().__init__()
        enc = EncoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        dec = DecoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.encoder = nn.ModuleList(copy.deepcopy(enc) for _ in range(num_encoder_layers))
        self.encoder_norm = nn.LayerNorm(d_model) if normalize_before else nn.Identity()
        self.decoder = nn.ModuleList(copy.deepcopy(dec) for _ in range(num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.d_model = d_model
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor) -> Tensor:
        memory = rearrange(src, "b c h w -> b (h w) c")
        pos = rearrange(pos, "b c h w -> b (h w) c")
        mask = mask.flatten(1)
        for layer in self.encoder:
            memory = layer(memory, mask, pos)
        memory = self.encoder_norm(memory)
        query_pos = query_embed[None].expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        states = []
        for layer in self.decoder:
            tgt = layer(tgt, memory, mask, pos, query_pos)
            states.append(self.decoder_norm(tgt))
        return torch.stack(states)
