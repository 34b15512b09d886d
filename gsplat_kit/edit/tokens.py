"""Token bookkeeping of Prompt-to-Prompt (Hertz et al. 2023, google/prompt-to-prompt seq_aligner.py):
which tokens a word becomes, the word-swap mapper, and the refinement alignment."""
from __future__ import annotations

import numpy as np
import torch

from gsplat_kit.common.errors import UserError


def check_prompt_length(prompt: str, tokenizer) -> int:
    """Number of tokens of `prompt` (with BOS/EOS); UserError if the tokenizer would truncate it."""
    n = len(tokenizer(prompt).input_ids)
    if n > tokenizer.model_max_length:
        raise UserError(f"prompt {prompt!r} is {n} tokens long; the tokenizer allows {tokenizer.model_max_length}")
    return n


def word_token_indices(text: str, word, tokenizer) -> list[int]:
    """Token positions (BOS = 0) of a word of `text`, given as the word itself (every occurrence) or its
    index among the space-separated words. A word that the tokenizer splits gives several positions."""
    split = text.split(" ")
    if isinstance(word, str):
        places = [i for i, w in enumerate(split) if w == word]
    else:
        places = [int(word)]
    if not places:
        return []
    pieces = [tokenizer.decode([t]).strip("#") for t in tokenizer.encode(text)][1:-1]
    out, cur_len, ptr = [], 0, 0
    for i, piece in enumerate(pieces):
        cur_len += len(piece)
        if ptr in places:
            out.append(i + 1)
        if ptr < len(split) and cur_len >= len(split[ptr]):
            ptr += 1
            cur_len = 0
    return out


def require_word_indices(text: str, word, tokenizer, what: str) -> list[int]:
    inds = word_token_indices(text, word, tokenizer)
    if not inds:
        raise UserError(f"{what}: word {word!r} is not in the prompt {text!r}")
    return inds


def replacement_mapper(source: str, target: str, tokenizer, max_len: int = 77) -> torch.Tensor:
    """[max_len, max_len] mapper M with target map = source map @ M (word swap). Words that differ are
    swapped token block for token block; a source word that becomes n target tokens gives 1/n to each."""
    words_x, words_y = source.split(" "), target.split(" ")
    if len(words_x) != len(words_y):
        raise UserError(
            f"replace edit: the prompts must have the same number of words, but {source!r} has {len(words_x)} "
            f"and {target!r} has {len(words_y)} (use edit_type='refine' to add or remove words)")
    changed = [i for i in range(len(words_y)) if words_y[i] != words_x[i]]
    src = [word_token_indices(source, i, tokenizer) for i in changed]
    tgt = [word_token_indices(target, i, tokenizer) for i in changed]
    mapper = np.zeros((max_len, max_len))
    i = j = k = 0
    while i < max_len and j < max_len:
        if k < len(src) and src[k][0] == i:
            s, t = src[k], tgt[k]
            if len(s) == len(t):
                mapper[s, t] = 1
            else:
                for it in t:
                    mapper[s, it] = 1.0 / len(t)
            k += 1
            i += len(s)
            j += len(t)
        else:
            # Unchanged tokens keep their own source token. (The original writes mapper[j, j] once all
            # swapped words are passed, which is the same unless a swap changed the token count.)
            mapper[i, j] = 1
            i += 1
            j += 1
    return torch.from_numpy(mapper).float()


def _global_align(x, y):
    """Needleman-Wunsch with match 1, mismatch -1, gap 0; returns (target index, source index or -1)."""
    nx, ny = len(x), len(y)
    score = np.zeros((nx + 1, ny + 1), dtype=np.int32)
    trace = np.zeros((nx + 1, ny + 1), dtype=np.int32)
    trace[0, 1:], trace[1:, 0], trace[0, 0] = 1, 2, 4
    for i in range(1, nx + 1):
        for j in range(1, ny + 1):
            left, up = score[i, j - 1], score[i - 1, j]
            diag = score[i - 1, j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            best = max(left, up, diag)
            score[i, j] = best
            trace[i, j] = 1 if best == left else (2 if best == up else 3)
    pairs, i, j = [], nx, ny
    while i > 0 or j > 0:
        t = trace[i, j]
        if t == 3:
            i, j = i - 1, j - 1
            pairs.append((j, i))
        elif t == 1:
            j -= 1
            pairs.append((j, -1))
        elif t == 2:
            i -= 1
        else:
            break
    pairs.reverse()
    return pairs


def refinement_mapper(source: str, target: str, tokenizer, max_len: int = 77):
    """(mapper [max_len] long, alphas [max_len]): target token n takes the source map of token mapper[n]
    when alphas[n] == 1; new tokens (alphas 0) keep their own map."""
    x, y = tokenizer.encode(source), tokenizer.encode(target)
    pairs = torch.tensor(_global_align(x, y), dtype=torch.int64)
    alphas = torch.ones(max_len)
    alphas[: pairs.shape[0]] = pairs[:, 1].ne(-1).float()
    mapper = torch.zeros(max_len, dtype=torch.int64)
    mapper[: pairs.shape[0]] = pairs[:, 1]
    mapper[pairs.shape[0]:] = len(y) + torch.arange(max_len - len(y))
    # A new token's index (-1) is never read (its alpha is 0); point it at itself so gathers stay in range.
    new = mapper < 0
    mapper[new] = torch.nonzero(new).flatten()
    return mapper.clamp_(max=max_len - 1), alphas
